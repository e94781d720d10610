#include "common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace ppc {

namespace {

std::string dir_of(const std::string & path) {
    const size_t slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::string base_of(const std::string & path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

[[noreturn]] void fail_errno(const std::string & what) {
    throw std::runtime_error(what + ": " + strerror(errno));
}

constexpr uint64_t k_page = 4096;
constexpr uint64_t k_chunk = 64ull << 20;        // progress / cancellation granularity
constexpr size_t   k_buffer = 4u << 20;          // fallback copy buffer

} // namespace

atomic_output::atomic_output(const std::string & path) : path_(path) {
    static std::atomic<unsigned> counter{0};
    tmp_path_ = dir_of(path) + "/." + base_of(path) + ".tmp-" + std::to_string(getpid()) + "-" +
                std::to_string(counter++);
    fd_ = open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_errno("cannot create a temporary file next to " + path);
}

atomic_output::~atomic_output() {
    if (fd_ >= 0) {
        close(fd_);
        unlink(tmp_path_.c_str());
    }
}

void atomic_output::write(const void * data, size_t n) {
    const uint8_t * p = (const uint8_t *) data;
    while (n > 0) {
        const ssize_t w = ::write(fd_, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail_errno("writing " + path_);
        }
        p += w;
        n -= (size_t) w;
        pos_ += (uint64_t) w;
    }
}

void atomic_output::copy_from(int in_fd, uint64_t offset, uint64_t n, const std::function<void(uint64_t)> & on_chunk) {
    while (n > 0) {
        // An unaligned start is copied alone up to the input's next page boundary: every later
        // in-kernel copy then starts page-aligned in the input (and in the output, where the caller
        // kept the input's offset within a page), which the kernel copies much faster.
        const uint64_t head = offset % k_page;
        const uint64_t chunk = std::min(n, head ? k_page - head : k_chunk);
        uint64_t left = chunk;
        while (left > 0 && use_copy_range_) {
            loff_t in_off = (loff_t) offset;
            const ssize_t r = copy_file_range(in_fd, &in_off, fd_, nullptr, left, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL) {
                    use_copy_range_ = false;  // e.g. across filesystems on old kernels
                    break;
                }
                fail_errno("copying into " + path_);
            }
            if (r == 0) throw std::runtime_error("unexpected end of input while writing " + path_);
            offset += (uint64_t) r;
            left   -= (uint64_t) r;
            pos_   += (uint64_t) r;
        }
        if (left > 0) {
            if (buf_.empty()) buf_.resize(k_buffer);
            while (left > 0) {
                const size_t want = (size_t) std::min<uint64_t>(left, buf_.size());
                const ssize_t r = pread(in_fd, buf_.data(), want, (off_t) offset);
                if (r < 0) {
                    if (errno == EINTR) continue;
                    fail_errno("reading input for " + path_);
                }
                if (r == 0) throw std::runtime_error("unexpected end of input while writing " + path_);
                write(buf_.data(), (size_t) r);
                offset += (uint64_t) r;
                left   -= (uint64_t) r;
            }
        }
        n -= chunk;
        on_chunk(chunk);
    }
}

void atomic_output::commit() {
    // No fsync, as cp and llama.cpp's tools: the rename makes the output appear complete or not at
    // all to every reader, and a crash of this process cannot leave a partial file behind. Flushing
    // to the disk (power-loss durability) would triple the wall time of a layer removal.
    if (close(fd_) != 0) {
        fd_ = -1;
        unlink(tmp_path_.c_str());
        fail_errno("closing " + path_);
    }
    fd_ = -1;
    if (rename(tmp_path_.c_str(), path_.c_str()) != 0) {
        const int err = errno;
        unlink(tmp_path_.c_str());
        errno = err;
        fail_errno("renaming the finished file to " + path_);
    }
}

void check_output_path(const std::string & in, const std::string & out) {
    struct stat si, so;
    if (stat(out.c_str(), &so) == 0 && stat(in.c_str(), &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino) {
        throw std::runtime_error("the output " + out + " is the input file; write to another path");
    }
    struct stat sd;
    const std::string dir = dir_of(out);
    if (stat(dir.c_str(), &sd) != 0 || !S_ISDIR(sd.st_mode)) {
        throw std::runtime_error("the output folder " + dir + " does not exist");
    }
}

} // namespace ppc
