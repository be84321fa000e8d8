// JSON-lines metrics: one object per line, numbers printed with 17 significant digits so that a
// double read back is bitwise the one written (runs are compared bitwise through these files).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

namespace uoe {

class JsonLine {
 public:
  JsonLine& add(const char* key, double v);
  JsonLine& add(const char* key, int v) { return add(key, static_cast<long long>(v)); }
  JsonLine& add(const char* key, long long v);
  JsonLine& add(const char* key, bool v);
  JsonLine& add(const char* key, const std::string& v);
  JsonLine& add(const char* key, const std::vector<double>& v);
  JsonLine& add(const char* key, const JsonLine& object);  // a nested object
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const char* k);
  std::string body_;
};

// Writes lines to a file; a no-op without a path. Flushes each line so a killed run keeps what it
// logged. A fresh start (resume_step 0) truncates the file. A run resumed at step S (its checkpoint's
// step, > 0) continues it as one run: the lines of steps ≤ S stay, and the lines after S (logged by
// the interrupted run after its checkpoint: those steps are trained again), any "final" line and a
// torn last line are dropped first (the file rewritten atomically), so no step appears twice.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path, long long resume_step = 0);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const JsonLine& line);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// Formats a double so that it round-trips (%.17g; non-finite values as null, which JSON lacks).
std::string json_number(double v);

}  // namespace uoe
