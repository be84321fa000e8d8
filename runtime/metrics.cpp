#include "runtime/metrics.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "runtime/atomic_file.hpp"
#include "runtime/error.hpp"

namespace uoe {

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void JsonLine::key(const char* k) {
  if (!body_.empty()) body_.push_back(',');
  body_.push_back('"');
  body_.append(k);
  body_.append("\":");
}
JsonLine& JsonLine::add(const char* k, double v) {
  key(k);
  body_ += json_number(v);
  return *this;
}
JsonLine& JsonLine::add(const char* k, long long v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}
JsonLine& JsonLine::add(const char* k, bool v) {
  key(k);
  body_ += v ? "true" : "false";
  return *this;
}
JsonLine& JsonLine::add(const char* k, const std::string& v) {
  key(k);
  body_ += "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') body_ += '\\';
    body_ += c;
  }
  body_ += "\"";
  return *this;
}
JsonLine& JsonLine::add(const char* k, const std::vector<double>& v) {
  key(k);
  body_ += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) body_.push_back(',');
    body_.append(json_number(v[i]));
  }
  body_ += "]";
  return *this;
}

JsonLine& JsonLine::add(const char* k, const JsonLine& object) {
  key(k);
  body_ += object.str();
  return *this;
}

namespace {

// The lines of an existing metrics file that a run resumed at `resume_step` keeps: whole lines
// ("{...}") of a step ≤ resume_step; not the "final" line. Returns false if there is no such file.
bool kept_metrics_lines(const std::string& path, long long resume_step, std::string* kept, int* dropped) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  static constexpr char kStep[] = "{\"step\":";
  std::string line;
  while (std::getline(in, line)) {
    bool keep = false;
    if (line.size() > 2 && line.back() == '}' && line.compare(0, sizeof kStep - 1, kStep) == 0) {
      char* end = nullptr;
      const long long step = std::strtoll(line.c_str() + sizeof kStep - 1, &end, 10);
      keep = end != line.c_str() + sizeof kStep - 1 && (*end == ',' || *end == '}') && step <= resume_step;
    }
    if (keep)
      *kept += line + "\n";
    else
      ++*dropped;
  }
  return true;
}

}  // namespace

MetricsWriter::MetricsWriter(const std::string& path, long long resume_step) : path_(path) {
  if (path.empty()) return;
  std::string kept;
  int dropped = 0;
  const bool append = resume_step > 0 && kept_metrics_lines(path, resume_step, &kept, &dropped);
  if (append && dropped > 0) {
    try {
      AtomicFile rewrite(path);
      rewrite.write(kept);
      rewrite.commit();
    } catch (const Error& e) {
      fail("cannot rewrite --metrics file '", path, "' for the resumed run: ", e.what());
    }
  }
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) fail("cannot open --metrics file '", path, "': ", std::strerror(errno));
}
MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}
void MetricsWriter::write(const JsonLine& line) {
  if (!f_) return;
  const std::string s = line.str() + "\n";
  if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::fflush(f_) != 0)
    fail("cannot write --metrics file '", path_, "': ", std::strerror(errno));
}

}  // namespace uoe
