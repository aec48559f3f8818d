"""Integrations of the pruning policies into other frameworks' models: ``transformers``' own
``generate`` (:mod:`.transformers`) and vLLM's serving engine (:mod:`.vllm`, a vLLM plugin)."""
