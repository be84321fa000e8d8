#include "runtime/metrics.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>

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

MetricsWriter::MetricsWriter(const std::string& path, bool append) : path_(path) {
  if (path.empty()) return;
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
