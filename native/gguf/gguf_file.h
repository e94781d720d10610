// A bounds-checked GGUF reader over a read-only memory map, and the byte-level pieces needed to
// write GGUF files. Every read is checked against the file size; errors name the file, the
// offending item and its byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ppc {

struct gguf_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// GGUF value types, numbered as in the GGUF specification.
enum gguf_vtype : uint32_t {
    GGUF_VT_UINT8 = 0, GGUF_VT_INT8 = 1, GGUF_VT_UINT16 = 2, GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4, GGUF_VT_INT32 = 5, GGUF_VT_FLOAT32 = 6, GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_UINT64 = 10, GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12, GGUF_VT_COUNT = 13,
};

const char * gguf_vtype_name(uint32_t t);
// Size in bytes of a fixed-size value type; 0 for STRING and ARRAY.
size_t gguf_vtype_size(uint32_t t);

// One key/value pair. `value` points into the mapping: the value's bytes, type tag excluded
// (for arrays: element type, count, elements).
struct gguf_kv {
    std::string     key;
    uint32_t        type      = 0;  // gguf_vtype
    uint32_t        elem_type = 0;  // arrays only
    uint64_t        n_elem    = 1;  // arrays: element count; scalars: 1
    const uint8_t * record    = nullptr;  // start of the whole record (key length first)
    size_t          record_size = 0;
    const uint8_t * value     = nullptr;
    size_t          value_size = 0;
};

struct gguf_tensor_info {
    std::string name;
    uint32_t    n_dims = 0;
    int64_t     ne[4]  = {1, 1, 1, 1};
    uint32_t    type   = 0;       // ggml_type
    uint64_t    offset = 0;       // relative to the data section
    uint64_t    n_bytes = 0;
    uint64_t    n_elements = 0;
};

class gguf_file {
public:
    // Maps and parses `path`. Throws gguf_error on anything malformed.
    explicit gguf_file(const std::string & path);
    ~gguf_file();
    gguf_file(const gguf_file &) = delete;
    gguf_file & operator=(const gguf_file &) = delete;

    const std::string & path() const { return path_; }
    int      fd() const { return fd_; }
    uint64_t file_size() const { return size_; }
    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }

    const std::vector<gguf_kv> & kvs() const { return kvs_; }
    const std::vector<gguf_tensor_info> & tensors() const { return tensors_; }

    // nullptr if absent.
    const gguf_kv * find(const std::string & key) const;
    const gguf_tensor_info * find_tensor(const std::string & name) const;

    // Typed accessors; throw gguf_error naming the key when the type does not fit.
    std::string get_string(const std::string & key) const;
    // Any integer scalar type, range-checked into int64.
    int64_t get_int(const gguf_kv & kv) const;
    // Numeric array element i as double / int64 (bool counts as 0/1).
    double  array_number(const gguf_kv & kv, uint64_t i) const;
    // Byte span [begin, end) of array element i, relative to kv.value.
    std::pair<size_t, size_t> array_element_span(const gguf_kv & kv, uint64_t i) const;
    std::string array_string(const gguf_kv & kv, uint64_t i) const;
    std::string scalar_string(const gguf_kv & kv) const;
    double scalar_number(const gguf_kv & kv) const;

    // Pointer to a tensor's data inside the mapping (checked at parse time).
    const uint8_t * tensor_data(const gguf_tensor_info & t) const;

private:
    void parse();

    std::string path_;
    int      fd_ = -1;
    uint8_t * map_ = nullptr;
    uint64_t size_ = 0;
    uint32_t version_ = 0;
    uint32_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<gguf_kv> kvs_;
    std::vector<gguf_tensor_info> tensors_;
};

// Appends GGUF-encoded values to a byte buffer (little-endian, as GGUF is).
class gguf_buffer {
public:
    std::vector<uint8_t> bytes;

    void raw(const void * p, size_t n);
    template <typename T> void pod(T v) { raw(&v, sizeof(v)); }
    void str(const std::string & s);
    // Key, type tag and value of a scalar integer KV with the given GGUF integer type.
    void kv_int(const std::string & key, uint32_t type, int64_t v);
    void kv_string(const std::string & key, const std::string & v);
    void kv_bool_array(const std::string & key, const std::vector<bool> & v);
    void kv_u32_array(const std::string & key, const std::vector<uint32_t> & v);
    void pad_to(size_t alignment);
};

// Size in bytes of a tensor of the given ggml type and shape; throws if the shape does not fit
// the type's block size.
uint64_t ggml_tensor_nbytes(uint32_t type, const int64_t ne[4], const std::string & name);

} // namespace ppc
