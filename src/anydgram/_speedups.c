/* The optional compiled fast path of anydgram's batch paths (Linux).
 *
 * Two pieces of per-datagram work, each the exact counterpart of a pure-Python reference that
 * stays the default wherever this module is not built or ANYDGRAM_NO_EXTENSIONS is set:
 *
 *   unpack_batch   _mmsg.unpack_batch: a recvmmsg batch into (bytes, address, None, control)
 *                  items, the senders' addresses looked up in (and added to) the receiver's
 *                  cache, each datagram's control messages copied out when there are any;
 *   ReplySlots     _mmsg_send.ReplySlots: ReplyBatch's base, whose put() copies a reply into
 *                  its sendmmsg slot.
 *
 * Both produce the same objects, change the same state and raise the same exceptions as the
 * Python code; tests/test_speedups.py compares them on random batches. Plain C API, no
 * dependencies beyond the Python headers and libc.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* unpack_batch(lengths, names, data, offsets, name_offsets, namelen, limit, addresses, decode,
 *              cache_size[, controls, control_offsets, control_lengths])
 *     -> (batch, nbytes, oversize) */
static PyObject *
unpack_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 10 && nargs != 13) {
        PyErr_Format(PyExc_TypeError, "unpack_batch() takes 10 or 13 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    /* The control areas: none (the 4th item is None) unless controls is given and not None. */
    int with_controls = nargs == 13 && args[10] != Py_None;
    PyObject *control_offsets = NULL, *control_lengths = NULL;
    if (with_controls) {
        control_offsets = args[11];
        control_lengths = args[12];
        if (!PyList_CheckExact(control_offsets) || !PyList_CheckExact(control_lengths)) {
            PyErr_SetString(PyExc_TypeError, "unpack_batch() needs lists of control offsets and lengths");
            return NULL;
        }
    }
    PyObject *lengths = args[0], *names = args[1], *offsets = args[3], *name_offsets = args[4];
    PyObject *addresses = args[7], *decode = args[8];
    if (!PyList_CheckExact(lengths) || !PyBytes_CheckExact(names) ||
        !PyList_CheckExact(offsets) || !PyList_CheckExact(name_offsets) ||
        !PyDict_CheckExact(addresses)) {
        PyErr_SetString(PyExc_TypeError, "unpack_batch() needs lists, bytes and a dict");
        return NULL;
    }
    Py_ssize_t namelen = PyLong_AsSsize_t(args[5]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]);
    Py_ssize_t cache_size = PyLong_AsSsize_t(args[9]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_buffer controls = {0};
    if (with_controls && PyObject_GetBuffer(args[10], &controls, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const char *base = data.buf;
    const char *raw_names = PyBytes_AS_STRING(names);
    Py_ssize_t names_size = PyBytes_GET_SIZE(names);
    /* zip(lengths, offsets, name_offsets): the shortest decides */
    Py_ssize_t count = PyList_GET_SIZE(lengths);
    if (PyList_GET_SIZE(offsets) < count) {
        count = PyList_GET_SIZE(offsets);
    }
    if (PyList_GET_SIZE(name_offsets) < count) {
        count = PyList_GET_SIZE(name_offsets);
    }
    if (with_controls) {
        if (PyList_GET_SIZE(control_offsets) < count) {
            count = PyList_GET_SIZE(control_offsets);
        }
        if (PyList_GET_SIZE(control_lengths) < count) {
            count = PyList_GET_SIZE(control_lengths);
        }
    }
    Py_ssize_t nbytes = 0, oversize = 0;
    PyObject *batch = PyList_New(0);
    if (batch == NULL) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = PyLong_AsSsize_t(PyList_GET_ITEM(lengths, i));
        if (length == -1 && PyErr_Occurred()) {
            goto fail;
        }
        if (length > limit) {
            oversize++;
            continue;
        }
        Py_ssize_t offset = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, i));
        Py_ssize_t name_offset = PyLong_AsSsize_t(PyList_GET_ITEM(name_offsets, i));
        if ((offset == -1 || name_offset == -1) && PyErr_Occurred()) {
            goto fail;
        }
        if (length < 0 || offset < 0 || name_offset < 0 || offset + length > data.len || name_offset + namelen > names_size) {
            PyErr_SetString(PyExc_ValueError, "unpack_batch(): a datagram outside the buffers");
            goto fail;
        }
        PyObject *key = PyBytes_FromStringAndSize(raw_names + name_offset, namelen);
        if (key == NULL) {
            goto fail;
        }
        PyObject *address = PyDict_GetItemWithError(addresses, key); /* borrowed */
        if (address != NULL) {
            Py_INCREF(address);
        }
        else if (PyErr_Occurred()) {
            Py_DECREF(key);
            goto fail;
        }
        else {
            address = PyObject_CallOneArg(decode, key);
            if (address == NULL) {
                Py_DECREF(key);
                goto fail;
            }
            if (PyDict_GET_SIZE(addresses) >= cache_size) {
                PyDict_Clear(addresses);
            }
            if (PyDict_SetItem(addresses, key, address) < 0) {
                Py_DECREF(key);
                Py_DECREF(address);
                goto fail;
            }
        }
        Py_DECREF(key);
        PyObject *payload = PyBytes_FromStringAndSize(base + offset, length);
        if (payload == NULL) {
            Py_DECREF(address);
            goto fail;
        }
        PyObject *control = Py_None;
        if (with_controls) {
            Py_ssize_t control_offset = PyLong_AsSsize_t(PyList_GET_ITEM(control_offsets, i));
            Py_ssize_t control_length = PyLong_AsSsize_t(PyList_GET_ITEM(control_lengths, i));
            if ((control_offset == -1 || control_length == -1) && PyErr_Occurred()) {
                Py_DECREF(payload);
                Py_DECREF(address);
                goto fail;
            }
            if (control_offset < 0 || control_length < 0 ||
                control_offset + control_length > controls.len) {
                Py_DECREF(payload);
                Py_DECREF(address);
                PyErr_SetString(PyExc_ValueError, "unpack_batch(): a control area outside the buffers");
                goto fail;
            }
            control = PyBytes_FromStringAndSize((const char *)controls.buf + control_offset,
                                                control_length);
            if (control == NULL) {
                Py_DECREF(payload);
                Py_DECREF(address);
                goto fail;
            }
        }
        else {
            Py_INCREF(Py_None);
        }
        PyObject *item = PyTuple_New(4);
        if (item == NULL) {
            Py_DECREF(payload);
            Py_DECREF(address);
            Py_DECREF(control);
            goto fail;
        }
        PyTuple_SET_ITEM(item, 0, payload);
        PyTuple_SET_ITEM(item, 1, address);
        Py_INCREF(Py_None);
        PyTuple_SET_ITEM(item, 2, Py_None);
        PyTuple_SET_ITEM(item, 3, control);
        int failed = PyList_Append(batch, item);
        Py_DECREF(item);
        if (failed < 0) {
            goto fail;
        }
        nbytes += length;
    }
    PyBuffer_Release(&data);
    if (with_controls) {
        PyBuffer_Release(&controls);
    }
    return Py_BuildValue("(Nnn)", batch, nbytes, oversize);
fail:
    PyBuffer_Release(&data);
    if (with_controls) {
        PyBuffer_Release(&controls);
    }
    Py_XDECREF(batch);
    return NULL;
}

/* ReplySlots: the slot state of a ReplyBatch and its put(). */
typedef struct {
    PyObject_HEAD
    Py_ssize_t count;
    Py_ssize_t capacity;
    Py_ssize_t slot_size;
    char blocked;
    PyObject *names; /* peer address -> int, the address of its encoded sockaddr */
    PyObject *peers; /* list, capacity long: each queued reply's peer */
    PyObject *owners; /* the ctypes arrays the pointers below point into, kept alive */
    char *data;
    struct iovec *iovecs;
    struct mmsghdr *messages;
} ReplySlots;

static PyObject *put_slowly_name;

static int
slots_traverse(ReplySlots *self, visitproc visit, void *arg)
{
    Py_VISIT(self->names);
    Py_VISIT(self->peers);
    Py_VISIT(self->owners);
    return 0;
}

static int
slots_clear(ReplySlots *self)
{
    Py_CLEAR(self->names);
    Py_CLEAR(self->peers);
    Py_CLEAR(self->owners);
    return 0;
}

static void
slots_dealloc(ReplySlots *self)
{
    PyObject_GC_UnTrack(self);
    slots_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void *
buffer_start(PyObject *owner, Py_ssize_t need)
{
    Py_buffer view;
    if (PyObject_GetBuffer(owner, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    void *start = view.buf;
    Py_ssize_t size = view.len;
    PyBuffer_Release(&view); /* the owner is kept alive by the slots; ctypes arrays never move */
    if (size < need) {
        PyErr_SetString(PyExc_ValueError, "ReplySlots: a buffer too small for its slots");
        return NULL;
    }
    return start;
}

/* _setup_slots(buffer, iovecs, messages, slot_size, capacity, names, peers) */
static PyObject *
slots_setup(ReplySlots *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "_setup_slots() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(args[3]);
    Py_ssize_t capacity = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyDict_CheckExact(args[5]) || !PyList_CheckExact(args[6]) ||
        PyList_GET_SIZE(args[6]) != capacity || slot < 0 || capacity < 0) {
        PyErr_SetString(PyExc_ValueError, "_setup_slots(): bad slot geometry");
        return NULL;
    }
    char *data = buffer_start(args[0], slot * capacity);
    struct iovec *iovecs = data ? buffer_start(args[1], capacity * sizeof(struct iovec)) : NULL;
    struct mmsghdr *messages =
        iovecs ? buffer_start(args[2], capacity * sizeof(struct mmsghdr)) : NULL;
    if (messages == NULL) {
        return NULL;
    }
    PyObject *owners = PyTuple_Pack(3, args[0], args[1], args[2]);
    if (owners == NULL) {
        return NULL;
    }
    Py_XSETREF(self->owners, owners);
    Py_INCREF(args[5]);
    Py_XSETREF(self->names, args[5]);
    Py_INCREF(args[6]);
    Py_XSETREF(self->peers, args[6]);
    self->data = data;
    self->iovecs = iovecs;
    self->messages = messages;
    self->slot_size = slot;
    self->capacity = capacity;
    self->count = 0;
    self->blocked = 0;
    Py_RETURN_NONE;
}

static PyObject *
slots_put(ReplySlots *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "put() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *data = args[0], *address = args[1];
    if (self->names == NULL || self->peers == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "put() before _setup_slots()");
        return NULL;
    }
    Py_ssize_t i = self->count;
    PyObject *name = PyDict_GetItemWithError(self->names, address); /* borrowed */
    if (name == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (name == NULL || name == Py_None || i >= self->capacity || self->blocked) {
        PyObject *call[3] = {(PyObject *)self, data, address};
        return PyObject_VectorcallMethod(
            put_slowly_name, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_ssize_t n = PyObject_Length(data);
    if (n < 0) {
        return NULL;
    }
    if (n > self->slot_size) {
        Py_RETURN_FALSE;
    }
    void *pointer = PyLong_AsVoidPtr(name);
    if (pointer == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0 || i >= PyList_GET_SIZE(self->peers)) {
        PyErr_SetString(PyExc_IndexError, "put(): slot index out of range");
        return NULL;
    }
    if (PyBytes_CheckExact(data)) {
        memcpy(self->data + i * self->slot_size, PyBytes_AS_STRING(data), (size_t)n);
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        if (view.len != n) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError,
                            "memoryview assignment: lvalue and rvalue have different structures");
            return NULL;
        }
        memcpy(self->data + i * self->slot_size, view.buf, (size_t)n);
        PyBuffer_Release(&view);
    }
    self->messages[i].msg_hdr.msg_name = pointer;
    self->iovecs[i].iov_len = (size_t)n;
    Py_INCREF(address);
    PyObject *old = PyList_GET_ITEM(self->peers, i);
    PyList_SET_ITEM(self->peers, i, address);
    Py_XDECREF(old);
    self->count = i + 1;
    Py_RETURN_TRUE;
}

static PyMethodDef slots_methods[] = {
    {"_setup_slots", (PyCFunction)(void (*)(void))slots_setup, METH_FASTCALL,
     "Point the slots at their buffers (see _mmsg_send.ReplySlots)."},
    {"put", (PyCFunction)(void (*)(void))slots_put, METH_FASTCALL,
     "Queue data for address; False if it must be sent the ordinary way."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef slots_members[] = {
    {"count", T_PYSSIZET, offsetof(ReplySlots, count), 0, "slots filled"},
    {"capacity", T_PYSSIZET, offsetof(ReplySlots, capacity), 0, "slots in all"},
    {"blocked", T_BOOL, offsetof(ReplySlots, blocked), 0, "the kernel's buffer was full"},
    {"_slot_size", T_PYSSIZET, offsetof(ReplySlots, slot_size), READONLY, "room per slot"},
    {"_names", T_OBJECT, offsetof(ReplySlots, names), READONLY, "peer -> sockaddr address"},
    {"_peers", T_OBJECT, offsetof(ReplySlots, peers), READONLY, "each slot's peer"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReplySlotsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "anydgram._speedups.ReplySlots",
    .tp_basicsize = sizeof(ReplySlots),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sendmmsg slots: the compiled counterpart of _mmsg_send.ReplySlots.",
    .tp_traverse = (traverseproc)slots_traverse,
    .tp_clear = (inquiry)slots_clear,
    .tp_dealloc = (destructor)slots_dealloc,
    .tp_methods = slots_methods,
    .tp_members = slots_members,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"unpack_batch", (PyCFunction)(void (*)(void))unpack_batch, METH_FASTCALL,
     "A recvmmsg batch into (bytes, address, None, control) items (see _mmsg.unpack_batch)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "anydgram._speedups",
    .m_doc = "The optional compiled fast path of anydgram's batch paths.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    put_slowly_name = PyUnicode_InternFromString("_put_slowly");
    if (put_slowly_name == NULL || PyType_Ready(&ReplySlotsType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&ReplySlotsType);
    if (PyModule_AddObject(module, "ReplySlots", (PyObject *)&ReplySlotsType) < 0 ||
        PyModule_AddIntConstant(module, "MMSGHDR_SIZE", sizeof(struct mmsghdr)) < 0 ||
        PyModule_AddIntConstant(module, "IOVEC_SIZE", sizeof(struct iovec)) < 0) {
        Py_DECREF(&ReplySlotsType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
