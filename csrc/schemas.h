// Op schemas of the v2drop ops: the one place where every op is declared. ops.cpp defines them
// in the `v2drop` namespace; a host build of the CUDA backend (the test suite's emulator) may
// define the same schemas in a namespace of its own.
// Semantics: README.md and v2drop_kernels/reference.py (the spec).
#pragma once

#include <torch/library.h>

namespace v2drop {

inline void define_ops(torch::Library& m) {
  // Scores ‖hidden − prev‖₂ (float32, 0 at non-visual positions) and the positions of the k
  // visual tokens with the largest score, ascending. Ties: lower position first; NaN lowest.
  m.def("variation_topk(Tensor hidden, Tensor prev, Tensor vis_mask, int k)"
        " -> (Tensor keep_idx, Tensor scores)");
  // Fused score + select + compaction, padded layout [B, S, D]; position_ids [B, S] or [3, B, S].
  // Output length S' = S − num_visual + k. keep_pos: surviving original positions, ascending.
  m.def("variation_drop(Tensor hidden, Tensor prev, Tensor vis_mask, Tensor position_ids,"
        " int num_visual, int k)"
        " -> (Tensor hidden_out, Tensor position_ids_out, Tensor keep_pos, Tensor vis_mask_out,"
        " Tensor scores)");
  // Same, packed variable-length layout [T, D] with cu_seqlens (int32, [B + 1]) and per-row
  // visual counts and keep counts; also returns the result's cu_seqlens.
  m.def("variation_drop_varlen(Tensor hidden, Tensor prev, Tensor vis_mask, Tensor position_ids,"
        " Tensor cu_seqlens, int[] num_visual, int[] k)"
        " -> (Tensor hidden_out, Tensor position_ids_out, Tensor keep_pos, Tensor vis_mask_out,"
        " Tensor cu_seqlens_out, Tensor scores)");
  // Selection + compaction by given float32 scores (PyramidDrop's and FastV's attention scores):
  // the same ranking and outputs as variation_drop, without hidden states. Padded [B, S] ...
  m.def("select_drop(Tensor scores, Tensor vis_mask, Tensor position_ids, int num_visual, int k)"
        " -> (Tensor position_ids_out, Tensor keep_pos, Tensor vis_mask_out)");
  // ... and packed [T] with cu_seqlens.
  m.def("select_drop_varlen(Tensor scores, Tensor vis_mask, Tensor position_ids, Tensor cu_seqlens,"
        " int[] num_visual, int[] k)"
        " -> (Tensor position_ids_out, Tensor keep_pos, Tensor vis_mask_out, Tensor cu_seqlens_out)");
  // KV-cache compaction of several tensors (layers, keys and values) in one call: gather along
  // seq_dim with keep_pos. Out of place (new tensors of length n along seq_dim) ...
  m.def("kv_compact(Tensor[] caches, Tensor keep_pos, int seq_dim) -> Tensor[]");
  // ... or in place: positions [0, n) of each cache receive the kept entries, the rest is left
  // as it was (static shapes). keep_pos rows must be strictly increasing.
  m.def("kv_compact_(Tensor(a!)[] caches, Tensor keep_pos, int seq_dim) -> ()");
}

}  // namespace v2drop
