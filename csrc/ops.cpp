// The `v2drop` op library (schemas: schemas.h) and the Python module that loads it. Each backend
// registers its kernels in its own file with TORCH_LIBRARY_IMPL(v2drop, <Key>, m); the fake
// (meta) kernels live in v2drop_kernels/fake.py.
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

extern "C" {
// `import v2drop_kernels._C` loads this library, which runs the registrations below. The module
// itself is empty; the library uses no Python API (built with Py_LIMITED_API).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(v2drop, m) { v2drop::define_ops(m); }
