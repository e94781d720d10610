// Output files that appear complete or not at all: data goes to a temporary file in the target's
// folder, which is renamed over the target on commit() and removed if never committed.
#pragma once

#include "common/async.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ppc {

class atomic_output {
public:
    explicit atomic_output(const std::string & path);
    ~atomic_output();
    atomic_output(const atomic_output &) = delete;
    atomic_output & operator=(const atomic_output &) = delete;

    void write(const void * data, size_t n);
    // Copies n bytes of in_fd from `offset`, in the kernel where the filesystem allows
    // (copy_file_range), else through a bounded buffer. Calls `on_chunk(bytes)` after each chunk.
    void copy_from(int in_fd, uint64_t offset, uint64_t n, const std::function<void(uint64_t)> & on_chunk);
    uint64_t position() const { return pos_; }
    // The temporary file, for writers that open it by name (llama.cpp's quantizer).
    const std::string & temp_path() const { return tmp_path_; }
    void commit();

private:
    std::string path_;
    std::string tmp_path_;
    int fd_ = -1;
    uint64_t pos_ = 0;
    bool use_copy_range_ = true;
    std::vector<uint8_t> buf_;
};

// Throws if `out` names the same file as `in` (also through links), or its folder is missing.
void check_output_path(const std::string & in, const std::string & out);

} // namespace ppc
