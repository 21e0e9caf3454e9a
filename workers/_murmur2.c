/* Kafka's Java clients' key hash (org.apache.kafka.common.utils.Utils.murmur2), for the monitor
 * to tell in a few nanoseconds whether a prediction sits on the partition a Java producer (or
 * scorestream) would have put it on. workers/core/partitioning.py holds the same in Python. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static uint32_t murmur2(const unsigned char *data, Py_ssize_t length) {
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t whole = length / 4 * 4;
    for (Py_ssize_t i = 0; i < whole; i += 4) {
        uint32_t k = (uint32_t)data[i] | ((uint32_t)data[i + 1] << 8) |
                     ((uint32_t)data[i + 2] << 16) | ((uint32_t)data[i + 3] << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length & 3) {
    case 3: h ^= (uint32_t)data[whole + 2] << 16; /* fall through */
    case 2: h ^= (uint32_t)data[whole + 1] << 8;  /* fall through */
    case 1: h ^= (uint32_t)data[whole]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static PyObject *murmur2_py(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t h = murmur2((const unsigned char *)key.buf, key.len);
    PyBuffer_Release(&key);
    return PyLong_FromUnsignedLong(h);
}

/* partition(key, n): key is bytes-like or a str (hashed as its UTF-8, without the copy
   str.encode() would make: this runs once per prediction the monitor reads). */
static PyObject *partition_py(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "partition(key, partitions) takes two arguments");
        return NULL;
    }
    long partitions = PyLong_AsLong(args[1]);
    if (partitions == -1 && PyErr_Occurred()) return NULL;
    if (partitions <= 0) {
        PyErr_SetString(PyExc_ValueError, "partitions must be positive");
        return NULL;
    }
    uint32_t h;
    if (PyUnicode_Check(args[0])) {
        Py_ssize_t len;
        const char *data = PyUnicode_AsUTF8AndSize(args[0], &len);
        if (data == NULL) return NULL;
        h = murmur2((const unsigned char *)data, len);
    } else {
        Py_buffer key;
        if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0) return NULL;
        h = murmur2((const unsigned char *)key.buf, key.len);
        PyBuffer_Release(&key);
    }
    return PyLong_FromLong((long)((h & 0x7fffffffu) % (uint32_t)partitions));
}

static PyMethodDef methods[] = {
    {"murmur2", murmur2_py, METH_O, "The Java clients' murmur2 hash of a key (unsigned)."},
    {"partition", (PyCFunction)(void (*)(void))partition_py, METH_FASTCALL,
     "partition(key, n): the partition of n a Java producer picks for key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_murmur2", NULL, -1, methods};

PyMODINIT_FUNC PyInit__murmur2(void) { return PyModule_Create(&module); }
