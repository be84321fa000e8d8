// Helpers shared by the GoogleTest suites that check error messages.
#pragma once
#include <gtest/gtest.h>

#include <exception>
#include <string>

#include "runtime/error.hpp"

namespace uoe::testing_support {

// The uoe::Error message of f(), or "" and a test failure when f() throws nothing or something else.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const uoe::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a uoe::Error, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a uoe::Error, nothing was thrown";
  return "";
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace uoe::testing_support
