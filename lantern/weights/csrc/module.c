/* The Python module: empty. It exists only so that setuptools builds the library as an ordinary
 * extension module; Python calls the lantern_* functions through ctypes (which releases the GIL
 * for each call). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native",
                                       "lantern native kernels (called through ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&moduledef); }
