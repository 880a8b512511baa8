#include "thread_pool.h"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "entry_points.h"

namespace masked_ops {
namespace binding {

namespace {

// Most threads a host call uses; thread_parallel_for reads it once per call.
int g_num_threads = std::max(1u, std::thread::hardware_concurrency());

}  // namespace

void set_num_threads(int n) {
  if (n < 1) throw py::value_error("set_num_threads needs n >= 1, got " + std::to_string(n));
  g_num_threads = n;
}

int get_num_threads() { return g_num_threads; }

cpu::ParallelFor thread_parallel_for() {
  const int max_threads = g_num_threads;
  return [max_threads](int64_t tasks, int64_t elements_per_task, const cpu::TaskFn& fn) {
    if (tasks <= 0) return;
    // Starting a thread costs tens of microseconds: give each a fair amount of work.
    constexpr int64_t kMinElementsPerThread = int64_t(1) << 17;
    const int64_t by_work = std::max<int64_t>(
        1, tasks * std::max<int64_t>(elements_per_task, 1) / kMinElementsPerThread);
    const int64_t threads = std::min<int64_t>({int64_t(max_threads), tasks, by_work});
    if (threads <= 1) {
      fn(0, tasks);
      return;
    }
    auto range = [&](int64_t i, auto&& run) {
      run(tasks * i / threads, tasks * (i + 1) / threads);
    };
    std::vector<std::thread> pool;
    pool.reserve(size_t(threads - 1));
    int64_t started = 1;
    for (; started < threads; ++started) {
      // A thread that cannot be created (no memory or address space for its
      // stack, a process thread limit) leaves its range to this thread:
      // results do not depend on the split.
      try {
        range(started, [&](int64_t first, int64_t last) { pool.emplace_back(fn, first, last); });
      } catch (const std::system_error&) {
        break;
      }
    }
    range(0, fn);
    for (int64_t i = started; i < threads; ++i) range(i, fn);
    for (auto& t : pool) t.join();
  };
}

}  // namespace binding
}  // namespace masked_ops
