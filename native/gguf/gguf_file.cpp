#include "gguf/gguf_file.h"

#include "ggml.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstring>
#include <limits>
#include <unordered_set>

namespace ppc {

namespace {

constexpr uint64_t k_max_string = 1ull << 30;  // no GGUF key or value string is a GiB long

std::string fmt(const char * f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char * f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return buf;
}

// Sequential reader over [p, end) that reports errors with the file name and offset.
struct cursor {
    const uint8_t * base;
    const uint8_t * p;
    const uint8_t * end;
    const std::string & path;

    uint64_t offset() const { return (uint64_t) (p - base); }

    [[noreturn]] void fail(const std::string & what) const {
        throw gguf_error(path + ": " + what + fmt(" (at byte %" PRIu64 ")", offset()));
    }
    void need(uint64_t n, const char * what) const {
        if ((uint64_t) (end - p) < n) {
            fail(std::string("truncated file: ") + what + fmt(" needs %" PRIu64 " bytes, %" PRIu64 " left",
                                                              n, (uint64_t) (end - p)));
        }
    }
    template <typename T> T pod(const char * what) {
        need(sizeof(T), what);
        T v;
        memcpy(&v, p, sizeof(T));
        p += sizeof(T);
        return v;
    }
    std::string str(const char * what) {
        const uint64_t n = pod<uint64_t>(what);
        if (n > k_max_string) fail(std::string(what) + fmt(": implausible string length %" PRIu64, n));
        need(n, what);
        std::string s((const char *) p, n);
        p += n;
        return s;
    }
    void skip(uint64_t n, const char * what) {
        need(n, what);
        p += n;
    }
};

} // namespace

const char * gguf_vtype_name(uint32_t t) {
    static const char * names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                   "bool", "string", "array", "uint64", "int64", "float64"};
    return t < GGUF_VT_COUNT ? names[t] : "invalid";
}

size_t gguf_vtype_size(uint32_t t) {
    switch (t) {
        case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
        case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
        case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
        case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
        default: return 0;
    }
}

uint64_t ggml_tensor_nbytes(uint32_t type, const int64_t ne[4], const std::string & name) {
    if (type >= GGML_TYPE_COUNT) {
        throw gguf_error(fmt("tensor '%s' has unknown ggml type %u", name.c_str(), type));
    }
    const int64_t blck = ggml_blck_size((ggml_type) type);
    const size_t  tsz  = ggml_type_size((ggml_type) type);
    if (blck <= 0 || tsz == 0) {
        throw gguf_error(fmt("tensor '%s' has ggml type %u, which this build of ggml no longer supports",
                             name.c_str(), type));
    }
    if (ne[0] % blck != 0) {
        throw gguf_error(fmt("tensor '%s': row length %" PRId64 " is not a multiple of %s's block size %" PRId64,
                             name.c_str(), ne[0], ggml_type_name((ggml_type) type), blck));
    }
    // Overflow-checked product of the row size and the other dimensions.
    uint64_t n = (uint64_t) (ne[0] / blck) * tsz;
    for (int d = 1; d < 4; ++d) {
        if (ne[d] != 0 && n > std::numeric_limits<uint64_t>::max() / (uint64_t) ne[d]) {
            throw gguf_error(fmt("tensor '%s': size overflows", name.c_str()));
        }
        n *= (uint64_t) ne[d];
    }
    return n;
}

gguf_file::gguf_file(const std::string & path) : path_(path) {
    fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
        throw gguf_error(path + ": cannot open: " + strerror(errno));
    }
    struct stat st;
    if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd_);
        throw gguf_error(path + ": not a regular file");
    }
    size_ = (uint64_t) st.st_size;
    if (size_ > 0) {
        void * m = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
        if (m == MAP_FAILED) {
            const int err = errno;
            close(fd_);
            throw gguf_error(path + ": cannot map: " + strerror(err));
        }
        map_ = (uint8_t *) m;
    }
    try {
        parse();
    } catch (...) {
        if (map_) munmap(map_, size_);
        close(fd_);
        throw;
    }
}

gguf_file::~gguf_file() {
    if (map_) munmap(map_, size_);
    if (fd_ >= 0) close(fd_);
}

void gguf_file::parse() {
    cursor c{map_, map_, map_ + size_, path_};
    if (size_ < 4 || memcmp(map_, "GGUF", 4) != 0) {
        throw gguf_error(path_ + ": not a GGUF file (no 'GGUF' magic)");
    }
    c.p += 4;
    version_ = c.pod<uint32_t>("version");
    if (version_ == 1) c.fail("GGUF version 1 is obsolete; convert the model again with a current llama.cpp");
    if (version_ != 2 && version_ != 3) c.fail(fmt("unsupported GGUF version %u", version_));
    const uint64_t n_tensors = c.pod<uint64_t>("tensor count");
    const uint64_t n_kv      = c.pod<uint64_t>("metadata count");
    // Each KV needs at least 12 bytes, each tensor info at least 28: reject absurd counts early.
    if (n_kv > size_ / 12 || n_tensors > size_ / 28) {
        c.fail(fmt("truncated or corrupt header: %" PRIu64 " metadata entries and %" PRIu64 " tensors cannot fit in %" PRIu64 " bytes",
                   n_kv, n_tensors, size_));
    }

    kvs_.reserve(n_kv);
    std::unordered_set<std::string> keys;
    for (uint64_t i = 0; i < n_kv; ++i) {
        gguf_kv kv;
        kv.record = c.p;
        kv.key  = c.str(fmt("key of metadata entry %" PRIu64, i).c_str());
        const std::string ctx = "value of '" + kv.key + "'";
        if (!keys.insert(kv.key).second) c.fail("duplicate metadata key '" + kv.key + "'");
        kv.type = c.pod<uint32_t>(ctx.c_str());
        if (kv.type >= GGUF_VT_COUNT) c.fail(fmt("'%s' has invalid value type %u", kv.key.c_str(), kv.type));
        kv.value = c.p;
        if (kv.type == GGUF_VT_STRING) {
            c.str(ctx.c_str());
        } else if (kv.type == GGUF_VT_ARRAY) {
            kv.elem_type = c.pod<uint32_t>(ctx.c_str());
            kv.n_elem    = c.pod<uint64_t>(ctx.c_str());
            if (kv.elem_type == GGUF_VT_ARRAY) c.fail("'" + kv.key + "' is an array of arrays, which GGUF readers do not support");
            if (kv.elem_type >= GGUF_VT_COUNT) c.fail(fmt("'%s' has invalid array element type %u", kv.key.c_str(), kv.elem_type));
            if (kv.elem_type == GGUF_VT_STRING) {
                if (kv.n_elem > (uint64_t) (c.end - c.p) / 8) c.fail(fmt("truncated file: '%s' declares %" PRIu64 " elements, more than the file holds", kv.key.c_str(), kv.n_elem));
                for (uint64_t j = 0; j < kv.n_elem; ++j) c.str(ctx.c_str());
            } else {
                const uint64_t esz = gguf_vtype_size(kv.elem_type);
                if (kv.n_elem > (uint64_t) (c.end - c.p) / esz) c.fail(fmt("truncated file: '%s' declares %" PRIu64 " elements, more than the file holds", kv.key.c_str(), kv.n_elem));
                c.skip(kv.n_elem * esz, ctx.c_str());
            }
        } else {
            c.skip(gguf_vtype_size(kv.type), ctx.c_str());
        }
        kv.value_size  = (size_t) (c.p - kv.value);
        kv.record_size = (size_t) (c.p - kv.record);
        kvs_.push_back(std::move(kv));
    }

    if (const gguf_kv * a = find("general.alignment")) {
        if (a->type != GGUF_VT_UINT32) throw gguf_error(path_ + ": general.alignment must be uint32");
        uint32_t al;
        memcpy(&al, a->value, 4);
        if (al == 0 || (al & (al - 1)) != 0) throw gguf_error(path_ + fmt(": general.alignment %u is not a power of two", al));
        alignment_ = al;
    }

    tensors_.reserve(n_tensors);
    std::unordered_set<std::string> names;
    for (uint64_t i = 0; i < n_tensors; ++i) {
        gguf_tensor_info t;
        t.name = c.str(fmt("name of tensor %" PRIu64, i).c_str());
        if (t.name.size() >= GGML_MAX_NAME) c.fail(fmt("tensor name '%s' is longer than %d bytes", t.name.c_str(), GGML_MAX_NAME - 1));
        if (!names.insert(t.name).second) c.fail("duplicate tensor name '" + t.name + "'");
        const std::string ctx = "info of tensor '" + t.name + "'";
        t.n_dims = c.pod<uint32_t>(ctx.c_str());
        if (t.n_dims == 0 || t.n_dims > 4) c.fail(fmt("tensor '%s' has %u dimensions (1 to 4 allowed)", t.name.c_str(), t.n_dims));
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            const uint64_t ne = c.pod<uint64_t>(ctx.c_str());
            if (ne == 0 || ne > (uint64_t) INT64_MAX) c.fail(fmt("tensor '%s' has invalid dimension %u = %" PRIu64, t.name.c_str(), d, ne));
            t.ne[d] = (int64_t) ne;
        }
        t.type   = c.pod<uint32_t>(ctx.c_str());
        t.offset = c.pod<uint64_t>(ctx.c_str());
        try {
            t.n_bytes = ggml_tensor_nbytes(t.type, t.ne, t.name);
        } catch (const gguf_error & e) {
            c.fail(e.what());
        }
        t.n_elements = (uint64_t) t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3];
        if (t.offset % alignment_ != 0) c.fail(fmt("tensor '%s' data offset %" PRIu64 " is not aligned to %u", t.name.c_str(), t.offset, alignment_));
        tensors_.push_back(std::move(t));
    }

    const uint64_t header_end = c.offset();
    data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
    if (n_tensors > 0 && data_offset_ > size_) {
        throw gguf_error(path_ + fmt(": truncated file: the tensor data section should start at byte %" PRIu64
                                     " but the file has %" PRIu64 " bytes", data_offset_, size_));
    }
    const uint64_t data_size = size_ - std::min(size_, data_offset_);
    for (const auto & t : tensors_) {
        if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
            throw gguf_error(path_ + fmt(": truncated or corrupt file: tensor '%s' (%" PRIu64 " bytes at data offset %" PRIu64
                                         ") runs past the end of the file (data section holds %" PRIu64 " bytes)",
                                         t.name.c_str(), t.n_bytes, t.offset, data_size));
        }
    }
}

const gguf_kv * gguf_file::find(const std::string & key) const {
    for (const auto & kv : kvs_) {
        if (kv.key == key) return &kv;
    }
    return nullptr;
}

const gguf_tensor_info * gguf_file::find_tensor(const std::string & name) const {
    for (const auto & t : tensors_) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

std::string gguf_file::get_string(const std::string & key) const {
    const gguf_kv * kv = find(key);
    if (!kv) throw gguf_error(path_ + ": missing metadata key '" + key + "'");
    if (kv->type != GGUF_VT_STRING) throw gguf_error(path_ + ": '" + key + "' is " + gguf_vtype_name(kv->type) + ", expected string");
    return scalar_string(*kv);
}

std::string gguf_file::scalar_string(const gguf_kv & kv) const {
    uint64_t n;
    memcpy(&n, kv.value, 8);
    return std::string((const char *) kv.value + 8, n);
}

static double number_at(uint32_t type, const uint8_t * p) {
    switch (type) {
        case GGUF_VT_UINT8:  return *(const uint8_t *) p;
        case GGUF_VT_INT8:   return *(const int8_t *) p;
        case GGUF_VT_BOOL:   return *p ? 1 : 0;
        case GGUF_VT_UINT16: { uint16_t v; memcpy(&v, p, 2); return v; }
        case GGUF_VT_INT16:  { int16_t v;  memcpy(&v, p, 2); return v; }
        case GGUF_VT_UINT32: { uint32_t v; memcpy(&v, p, 4); return v; }
        case GGUF_VT_INT32:  { int32_t v;  memcpy(&v, p, 4); return v; }
        case GGUF_VT_FLOAT32:{ float v;    memcpy(&v, p, 4); return v; }
        case GGUF_VT_UINT64: { uint64_t v; memcpy(&v, p, 8); return (double) v; }
        case GGUF_VT_INT64:  { int64_t v;  memcpy(&v, p, 8); return (double) v; }
        case GGUF_VT_FLOAT64:{ double v;   memcpy(&v, p, 8); return v; }
        default: return NAN;
    }
}

double gguf_file::scalar_number(const gguf_kv & kv) const {
    if (gguf_vtype_size(kv.type) == 0) throw gguf_error(path_ + ": '" + kv.key + "' is not a number");
    return number_at(kv.type, kv.value);
}

int64_t gguf_file::get_int(const gguf_kv & kv) const {
    switch (kv.type) {
        case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_UINT16: case GGUF_VT_INT16:
        case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_INT64:
            return (int64_t) number_at(kv.type, kv.value);
        case GGUF_VT_UINT64: {
            uint64_t v;
            memcpy(&v, kv.value, 8);
            if (v > (uint64_t) INT64_MAX) throw gguf_error(path_ + ": '" + kv.key + "' is out of range");
            return (int64_t) v;
        }
        default:
            throw gguf_error(path_ + ": '" + kv.key + "' is " + gguf_vtype_name(kv.type) + ", expected an integer");
    }
}

std::pair<size_t, size_t> gguf_file::array_element_span(const gguf_kv & kv, uint64_t i) const {
    const size_t header = 4 + 8;  // element type, count
    if (kv.elem_type != GGUF_VT_STRING) {
        const size_t esz = gguf_vtype_size(kv.elem_type);
        return {header + i * esz, header + (i + 1) * esz};
    }
    size_t off = header;
    for (uint64_t j = 0;; ++j) {
        uint64_t n;
        memcpy(&n, kv.value + off, 8);
        if (j == i) return {off, off + 8 + n};
        off += 8 + n;
    }
}

double gguf_file::array_number(const gguf_kv & kv, uint64_t i) const {
    if (gguf_vtype_size(kv.elem_type) == 0) throw gguf_error(path_ + ": '" + kv.key + "' is not a numeric array");
    return number_at(kv.elem_type, kv.value + array_element_span(kv, i).first);
}

std::string gguf_file::array_string(const gguf_kv & kv, uint64_t i) const {
    const auto span = array_element_span(kv, i);
    return std::string((const char *) kv.value + span.first + 8, span.second - span.first - 8);
}

const uint8_t * gguf_file::tensor_data(const gguf_tensor_info & t) const {
    return map_ + data_offset_ + t.offset;
}

void gguf_buffer::raw(const void * p, size_t n) {
    const uint8_t * b = (const uint8_t *) p;
    bytes.insert(bytes.end(), b, b + n);
}

void gguf_buffer::str(const std::string & s) {
    pod<uint64_t>(s.size());
    raw(s.data(), s.size());
}

void gguf_buffer::kv_int(const std::string & key, uint32_t type, int64_t v) {
    str(key);
    pod<uint32_t>(type);
    switch (type) {
        case GGUF_VT_UINT8:  pod<uint8_t>((uint8_t) v); break;
        case GGUF_VT_INT8:   pod<int8_t>((int8_t) v); break;
        case GGUF_VT_UINT16: pod<uint16_t>((uint16_t) v); break;
        case GGUF_VT_INT16:  pod<int16_t>((int16_t) v); break;
        case GGUF_VT_UINT32: pod<uint32_t>((uint32_t) v); break;
        case GGUF_VT_INT32:  pod<int32_t>((int32_t) v); break;
        case GGUF_VT_UINT64: pod<uint64_t>((uint64_t) v); break;
        case GGUF_VT_INT64:  pod<int64_t>(v); break;
        default: throw gguf_error(std::string("kv_int: '") + key + "' needs an integer type");
    }
}

void gguf_buffer::kv_string(const std::string & key, const std::string & v) {
    str(key);
    pod<uint32_t>(GGUF_VT_STRING);
    str(v);
}

void gguf_buffer::kv_bool_array(const std::string & key, const std::vector<bool> & v) {
    str(key);
    pod<uint32_t>(GGUF_VT_ARRAY);
    pod<uint32_t>(GGUF_VT_BOOL);
    pod<uint64_t>(v.size());
    for (bool b : v) pod<uint8_t>(b ? 1 : 0);
}

void gguf_buffer::kv_u32_array(const std::string & key, const std::vector<uint32_t> & v) {
    str(key);
    pod<uint32_t>(GGUF_VT_ARRAY);
    pod<uint32_t>(GGUF_VT_UINT32);
    pod<uint64_t>(v.size());
    for (uint32_t x : v) pod<uint32_t>(x);
}

void gguf_buffer::pad_to(size_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(0);
}

} // namespace ppc
