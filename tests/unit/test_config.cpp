// Configuration: defaults, every validation rule, command line + INI precedence, file checks, the
// config_to_ini round trip, and the option table (runtime/options.hpp) against what is generated
// from it: the parser, --help, the INI text and the keys a checkpoint's config is compared by.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "checkpoints/manifest.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"
#include "runtime/options.hpp"

namespace uoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

ConfigParse parse(std::initializer_list<std::string> args, std::string* help = nullptr) {
  std::vector<std::string> storage{"uoe-train"};
  storage.insert(storage.end(), args);
  std::vector<const char*> argv;
  for (const std::string& s : storage) argv.push_back(s.c_str());
  return config_parse(static_cast<int>(argv.size()), argv.data(), help);
}

// The message of the uoe::Error that `f` throws ("" and a test failure if it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a uoe::Error";
  return "";
}

// A fresh directory per test for the files it writes.
class ConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // The process id too: unit.all_shuffled runs this test beside CTest's own run of it.
    dir_ = fs::path(::testing::TempDir()) / ("uoe_config_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }

  fs::path dir_;
};

// Whether a and b hold the same value for option o.
bool same_value(const Config& a, const Config& b, const Option& o) {
  return std::visit([&](auto member) { return a.*member == b.*member; }, o.field);
}

// Sets option o of c to a value other than the one it holds, chosen from the member's type alone
// (so that every row of the table is covered, a new one included). Not necessarily valid
// (config_validate): the round trip below does not validate. Doubles need all 17 digits to read
// back; the uint64_t value is above 2^63.
void set_other_value(Config& c, const Option& o) {
  std::visit(
      [&](auto member) {
        auto& field = c.*member;
        using T = std::remove_cvref_t<decltype(field)>;
        if constexpr (std::is_same_v<T, std::string>)
          field = field + "other-" + o.name;
        else if constexpr (std::is_same_v<T, bool>)
          field = !field;
        else if constexpr (std::is_same_v<T, double>)
          field = field + 1.0 / 3.0;
        else if constexpr (std::is_same_v<T, uint64_t>)
          field = ~field;
        else
          field = field + 7;
      },
      o.field);
}

// Options that only the command line takes (not read from --config, not in the INI text).
bool command_line_only(const Option& o) { return o.group == OptionGroup::general; }

TEST(Config, DefaultsValidate) {
  EXPECT_NO_THROW(config_validate(Config{}));
  const ConfigParse parsed = parse({});
  EXPECT_FALSE(parsed.exit_now);
  EXPECT_EQ(config_to_ini(parsed.config), config_to_ini(Config{}));
}

TEST(Config, HelpListsGroupsAndExits) {
  std::string help;
  // --help wins over everything else on the line, even invalid values.
  const ConfigParse parsed = parse({"--topk", "99", "--help"}, &help);
  EXPECT_TRUE(parsed.exit_now);
  size_t at = 0;
  for (const char* heading :
       {"Data:", "Model:", "Training:", "Evaluation and logging:", "Parallelism:", "General:"}) {
    const size_t found = help.find(heading, at);
    ASSERT_NE(found, std::string::npos) << heading << " missing or out of order in\n" << help;
    at = found;
  }
  EXPECT_THAT(help, AllOf(HasSubstr("--d-model"), HasSubstr("(=128)"), HasSubstr("--capacity-factor"),
                          HasSubstr("(=1.25)"), HasSubstr("--config")));
}

// One invalid setting each; the message must name every option listed.
struct InvalidCase {
  const char* what;
  std::function<void(Config&)> change;
  std::vector<std::string> names;
};

TEST(Config, EachInvalidValueNamesItsOption) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<InvalidCase> cases = {
      {"layers 0", [](Config& c) { c.layers = 0; }, {"--layers"}},
      {"d-model 0", [](Config& c) { c.d_model = 0; }, {"--d-model"}},
      {"heads -1", [](Config& c) { c.heads = -1; }, {"--heads"}},
      {"attn-experts 0", [](Config& c) { c.attn_experts = 0; }, {"--attn-experts"}},
      {"attn-topk 0", [](Config& c) { c.attn_topk = 0; }, {"--attn-topk"}},
      {"experts 0", [](Config& c) { c.experts = 0; }, {"--experts"}},
      {"topk 0", [](Config& c) { c.topk = 0; }, {"--topk"}},
      {"d-ff 0", [](Config& c) { c.d_ff = 0; }, {"--d-ff"}},
      {"patch-size 0", [](Config& c) { c.patch_size = 0; }, {"--patch-size"}},
      {"seq-len 0", [](Config& c) { c.seq_len = 0; }, {"--seq-len"}},
      {"batch-size 0", [](Config& c) { c.batch_size = 0; }, {"--batch-size"}},
      {"micro-batches 0", [](Config& c) { c.micro_batches = 0; }, {"--micro-batches"}},
      {"steps 0", [](Config& c) { c.steps = 0; }, {"--steps"}},
      {"log-every 0", [](Config& c) { c.log_every = 0; }, {"--log-every"}},
      {"ep 0", [](Config& c) { c.ep = 0; }, {"--ep"}},
      {"warmup -1", [](Config& c) { c.warmup = -1; }, {"--warmup"}},
      {"eval-every -1", [](Config& c) { c.eval_every = -1; }, {"--eval-every"}},
      {"eval-batches -1", [](Config& c) { c.eval_batches = -1; }, {"--eval-batches"}},
      {"eval-windows -1", [](Config& c) { c.eval_windows = -1; }, {"--eval-windows"}},
      {"threads -1", [](Config& c) { c.threads = -1; }, {"--threads"}},
      {"data-offset -1", [](Config& c) { c.data_offset = -1; }, {"--data-offset"}},
      {"d % H", [](Config& c) { c.d_model = 130; }, {"--d-model", "--heads"}},
      {"odd head dim", [](Config& c) { c.d_model = 12; }, {"--d-model", "--heads", "even"}},
      {"H % E_a", [](Config& c) { c.d_model = 96, c.heads = 3, c.attn_experts = 2; },
       {"--heads", "--attn-experts"}},
      {"attn-topk > E_a", [](Config& c) { c.attn_topk = 5; }, {"--attn-topk", "--attn-experts"}},
      {"topk > E", [](Config& c) { c.topk = 5; }, {"--topk", "--experts"}},
      {"F % E", [](Config& c) { c.experts = 3, c.topk = 1; }, {"--d-ff", "--experts"}},
      {"T % patch", [](Config& c) { c.patch_size = 3; }, {"--seq-len", "--patch-size"}},
      {"E % ep", [](Config& c) { c.ep = 8; }, {"--experts", "--ep"}},
      {"E_a % ep", [](Config& c) { c.experts = 8, c.ep = 8; }, {"--attn-experts", "--ep"}},
      {"capacity-factor -1", [](Config& c) { c.capacity_factor = -1; }, {"--capacity-factor", "-1"}},
      {"capacity-factor nan", [=](Config& c) { c.capacity_factor = nan; }, {"--capacity-factor"}},
      {"gate bogus", [](Config& c) { c.gate = "bogus"; }, {"--gate", "bogus"}},
      {"tokenizer bogus", [](Config& c) { c.tokenizer = "bpe"; }, {"--tokenizer", "bpe"}},
      {"val-fraction 0", [](Config& c) { c.val_fraction = 0; }, {"--val-fraction"}},
      {"val-fraction 1", [](Config& c) { c.val_fraction = 1; }, {"--val-fraction"}},
      {"val-fraction nan", [=](Config& c) { c.val_fraction = nan; }, {"--val-fraction"}},
      {"lr 0", [](Config& c) { c.lr = 0; }, {"--lr"}},
      {"lr inf", [=](Config& c) { c.lr = inf, c.min_lr = 0; }, {"--lr"}},
      {"min-lr > lr", [](Config& c) { c.min_lr = 0.01; }, {"--min-lr", "--lr"}},
      {"min-lr -1", [](Config& c) { c.min_lr = -1; }, {"--min-lr"}},
      {"weight-decay -1", [](Config& c) { c.weight_decay = -1; }, {"--weight-decay"}},
      {"clip nan", [=](Config& c) { c.clip = nan; }, {"--clip"}},
      {"aux-loss -1", [](Config& c) { c.aux_loss = -1; }, {"--aux-loss"}},
      {"z-loss inf", [=](Config& c) { c.z_loss = inf; }, {"--z-loss"}},
  };
  for (const InvalidCase& k : cases) {
    SCOPED_TRACE(k.what);
    Config c;
    k.change(c);
    const std::string msg = error_of([&] { config_validate(c); });
    for (const std::string& name : k.names) EXPECT_THAT(msg, HasSubstr(name));
  }
}

TEST(Config, ValidEdgeValuesPass) {
  Config c;
  c.capacity_factor = 0;  // dropless
  c.eval_every = 0;
  c.eval_batches = 0;
  c.eval_windows = 0;
  c.threads = 0;
  c.clip = 0;
  c.min_lr = c.lr;
  c.attn_topk = c.attn_experts;
  c.topk = c.experts;
  c.patch_size = c.seq_len;
  c.ep = 4;
  EXPECT_NO_THROW(config_validate(c));
}

TEST(Config, CommandLineValuesReachTheConfig) {
  const Config c = parse({"--d-model", "64", "--heads=2", "--attn-experts", "2", "--capacity-factor", "0",
                          "--gate", "sum", "--seed", "18446744073709551615", "--lr", "3e-4"})
                       .config;
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.heads, 2);
  EXPECT_EQ(c.capacity_factor, 0.0);
  EXPECT_EQ(c.gate, "sum");
  EXPECT_EQ(c.seed, 18446744073709551615ull);
  EXPECT_EQ(c.lr, 3e-4);
}

TEST(Config, CommandLineErrorsNameTheOption) {
  EXPECT_THAT(error_of([] { parse({"--no-such-option"}); }), HasSubstr("'--no-such-option'"));
  EXPECT_THAT(error_of([] { parse({"--no-such-option=3"}); }), HasSubstr("'--no-such-option'"));
  EXPECT_THAT(error_of([] { parse({"stray"}); }), HasSubstr("'stray'"));
  EXPECT_THAT(error_of([] { parse({"--d-model", "abc"}); }), AllOf(HasSubstr("--d-model"), HasSubstr("abc")));
  EXPECT_THAT(error_of([] { parse({"--d-model", "1.5"}); }), HasSubstr("--d-model"));
  EXPECT_THAT(error_of([] { parse({"--steps", "99999999999"}); }), HasSubstr("--steps"));
  EXPECT_THAT(error_of([] { parse({"--seed", "-1"}); }), AllOf(HasSubstr("--seed"), HasSubstr("-1")));
  EXPECT_THAT(error_of([] { parse({"--d-model"}); }), HasSubstr("--d-model"));
  EXPECT_THAT(error_of([] { parse({"--topk", "1", "--topk", "2"}); }), HasSubstr("--topk"));
  // Abbreviations are not guessed: a typo must not silently select a longer option.
  EXPECT_THAT(error_of([] { parse({"--capacity", "2"}); }), HasSubstr("--capacity"));
  EXPECT_THAT(error_of([] { parse({"--capacity-factor", "-1"}); }), HasSubstr("--capacity-factor"));
  EXPECT_THAT(error_of([] { parse({"--capacity-factor", "nan"}); }), HasSubstr("--capacity-factor"));
  EXPECT_THAT(error_of([] { parse({"--patch-size", "3", "--seq-len", "128"}); }), HasSubstr("--patch-size"));
}

TEST_F(ConfigFiles, FileOverriddenByCommandLine) {
  const std::string ini = write("run.ini",
                                "# a comment\n"
                                "d-model = 64\n"
                                "heads = 2\n"
                                "attn-experts = 2\n"
                                "lr = 0.002\n"
                                "gate = sum\n");
  const Config c = parse({"--d-model", "32", "--config", ini, "--gate", "renorm"}).config;
  EXPECT_EQ(c.d_model, 32);     // command line
  EXPECT_EQ(c.gate, "renorm");  // command line
  EXPECT_EQ(c.heads, 2);        // file
  EXPECT_EQ(c.lr, 0.002);       // file
  EXPECT_EQ(c.layers, Config{}.layers);  // default
  EXPECT_EQ(c.config_file, ini);
}

TEST_F(ConfigFiles, FileErrorsNameTheFileAndKey) {
  const std::string unknown = write("unknown.ini", "d-model = 64\nbogus-key = 3\n");
  EXPECT_THAT(error_of([&] { parse({"--config", unknown}); }),
              AllOf(HasSubstr(unknown), HasSubstr("bogus-key")));

  const std::string bad_value = write("bad_value.ini", "heads = four\n");
  EXPECT_THAT(error_of([&] { parse({"--config", bad_value}); }),
              AllOf(HasSubstr(bad_value), HasSubstr("heads"), HasSubstr("four")));

  // --config and --help belong to the command line only.
  const std::string nested = write("nested.ini", "config = other.ini\n");
  EXPECT_THAT(error_of([&] { parse({"--config", nested}); }),
              AllOf(HasSubstr(nested), HasSubstr("'config'")));

  // Values from the file are validated like command-line ones.
  const std::string invalid = write("invalid.ini", "topk = 9\n");
  EXPECT_THAT(error_of([&] { parse({"--config", invalid}); }), HasSubstr("--topk"));

  EXPECT_THAT(error_of([] { parse({"--config", "/nonexistent.ini"}); }), HasSubstr("/nonexistent.ini"));
  EXPECT_THAT(error_of([&] { parse({"--config", dir_.string()}); }),
              AllOf(HasSubstr(dir_.string()), HasSubstr("not a regular file")));
}

TEST_F(ConfigFiles, DataFilesAreChecked) {
  const std::string text = write("text.txt", "hello\n");
  const std::string empty = write("empty.txt", "");
  EXPECT_EQ(parse({"--data", text, "--val-data", text}).config.data, text);

  EXPECT_THAT(error_of([] { parse({"--data", "/nonexistent/file.txt"}); }),
              AllOf(HasSubstr("--data"), HasSubstr("/nonexistent/file.txt"), HasSubstr("no such file")));
  EXPECT_THAT(error_of([&] { parse({"--data", empty}); }), AllOf(HasSubstr(empty), HasSubstr("empty")));
  EXPECT_THAT(error_of([&] { parse({"--data", dir_.string()}); }), HasSubstr("not a regular file"));
  EXPECT_THAT(error_of([&] { parse({"--data", text, "--val-data", empty}); }),
              AllOf(HasSubstr("--val-data"), HasSubstr(empty)));
}

// Every field differs from its default, and the doubles need all 17 digits to round-trip.
TEST_F(ConfigFiles, IniRoundTrip) {
  Config a;
  a.data = write("train.txt", "abc");
  a.val_data = write("val.txt", "def");
  a.val_fraction = 1.0 / 3.0;
  a.tokenizer = "word";
  a.layers = 3;
  a.d_model = 96;
  a.heads = 6;
  a.attn_experts = 3;
  a.attn_topk = 3;
  a.experts = 6;
  a.topk = 1;
  a.d_ff = 384;
  a.capacity_factor = 0.1;
  a.patch_size = 4;
  a.gate = "sum";
  a.aux_loss = 2.0 / 3.0;
  a.z_loss = 1e-3;
  a.seq_len = 64;
  a.batch_size = 5;
  a.micro_batches = 2;
  a.steps = 77;
  a.lr = 3e-4;
  a.min_lr = 1.0 / 7e4;
  a.warmup = 0;
  a.weight_decay = 0.0;
  a.clip = 0.7;
  a.seed = 18446744073709551615ull;
  a.eval_every = 0;
  a.eval_batches = 3;
  a.eval_windows = 77;
  a.log_every = 1;
  a.metrics = (dir_ / "metrics.jsonl").string();
  a.ep = 3;
  a.threads = 2;
  ASSERT_NO_THROW(config_validate(a));

  const std::string ini = write("roundtrip.ini", config_to_ini(a));
  const Config b = parse({"--config", ini}).config;

  EXPECT_EQ(b.config_file, ini);  // the only field that is not written to the INI
  for (const Option& o : config_options()) {
    if (!command_line_only(o)) {
      EXPECT_TRUE(same_value(a, b, o)) << "--" << o.name;
    }
  }
  EXPECT_EQ(config_to_ini(b), config_to_ini(a));

  // Defaults, with their empty paths, round-trip too.
  const std::string defaults = write("defaults.ini", config_to_ini(Config{}));
  EXPECT_EQ(config_to_ini(parse({"--config", defaults}).config), config_to_ini(Config{}));
}

// --- the option table --------------------------------------------------------------------------

// Lower-case words of letters and digits joined by single dashes, starting with a letter (no
// std::regex: GCC 12 warns inside <regex> under -fsanitize=address, and the build has -Werror).
bool is_option_name(const std::string& n) {
  if (n.empty() || n[0] < 'a' || n[0] > 'z' || n.back() == '-') return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    if (c == '-') {
      if (n[i - 1] == '-') return false;
    } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
      return false;
    }
  }
  return true;
}

// Every "--name" in a text, name = [a-z0-9-]+.
std::vector<std::string> flags_in(const std::string& text) {
  std::vector<std::string> out;
  for (size_t at = text.find("--"); at != std::string::npos; at = text.find("--", at + 2)) {
    size_t end = at + 2;
    while (end < text.size() && ((text[end] >= 'a' && text[end] <= 'z') || (text[end] >= '0' && text[end] <= '9') ||
                                 text[end] == '-'))
      ++end;
    if (end > at + 2) out.push_back(text.substr(at + 2, end - at - 2));
    at = end - 2;
  }
  return out;
}

TEST(ConfigTable, OneRowPerMemberAndName) {
  std::set<std::string> names;
  for (const Option& o : config_options()) {
    SCOPED_TRACE(o.name);
    EXPECT_TRUE(names.insert(o.name).second) << "two rows named " << o.name;
    // A name is an INI key and a --flag: lower case words joined by dashes.
    EXPECT_TRUE(is_option_name(o.name));
    EXPECT_EQ(&config_option(o.field), &o) << "the member is bound by another row too";
    EXPECT_EQ(option_flag(o.field), std::string("--") + o.name);
    EXPECT_NE(std::string(o.help), "");
  }
}

// (a) Every option, set alone and all together to another value, reads back from its INI text.
TEST(ConfigTable, EveryOptionRoundTripsThroughIni) {
  Config all;
  for (const Option& o : config_options()) {
    SCOPED_TRACE(o.name);
    Config a;
    set_other_value(a, o);
    ASSERT_FALSE(same_value(a, Config{}, o));
    const Config b = config_from_ini(config_to_ini(a), "test");
    for (const Option& p : config_options()) {
      if (p.field == o.field && command_line_only(o)) {
        EXPECT_TRUE(same_value(b, Config{}, p)) << "--" << p.name << " is command line only, so not in the INI";
      } else {
        EXPECT_TRUE(same_value(a, b, p)) << "--" << p.name;
      }
    }
    if (!command_line_only(o)) set_other_value(all, o);
  }
  const Config b = config_from_ini(config_to_ini(all), "test");
  for (const Option& o : config_options()) EXPECT_TRUE(same_value(all, b, o)) << "--" << o.name;
  EXPECT_EQ(config_to_ini(b), config_to_ini(all));
}

TEST(ConfigTable, IniReaderNamesWhereAndTheKey) {
  EXPECT_THAT(error_of([] { config_from_ini("layers = four\n", "stored.ini"); }),
              AllOf(HasSubstr("stored.ini"), HasSubstr("layers"), HasSubstr("four")));
  EXPECT_THAT(error_of([] { config_from_ini("seed = -1\n", "stored.ini"); }),
              AllOf(HasSubstr("--seed"), HasSubstr("-1")));
  for (const Option& o : config_options()) {
    if (command_line_only(o)) {
      EXPECT_THAT(error_of([&] { config_from_ini(std::string(o.name) + " = x\n", "stored.ini"); }),
                  HasSubstr(std::string("'") + o.name + "'"));
    }
  }
}

// A bool option is a flag: given bare it is set, and it takes an explicit 0 too.
TEST(ConfigTable, BoolOptionsAreFlags) {
  for (const Option& o : config_options()) {
    const auto* member = std::get_if<bool Config::*>(&o.field);
    if (!member) continue;
    SCOPED_TRACE(o.name);
    const std::string flag = std::string("--") + o.name;
    EXPECT_TRUE(parse({flag}).config.**member);
    EXPECT_FALSE(parse({flag + "=0"}).config.**member);
  }
}

// (b) Every option is listed by --help under its topic, and (unless command line only) is one key
// of the INI text, which is what a checkpoint's manifest stores and loading compares.
TEST(ConfigTable, EveryOptionIsInHelpAndInTheManifestKeys) {
  std::string help;
  ASSERT_TRUE(parse({"--help"}, &help).exit_now);
  std::map<std::string, int> keys;
  const auto entries = config_ini_entries(config_to_ini(Config{}));
  for (const auto& [k, v] : entries) ++keys[k];
  const auto listed = [](const std::vector<std::string>& v, const char* name) {
    return std::count(v.begin(), v.end(), name);
  };
  size_t written = 0;
  for (const Option& o : config_options()) {
    SCOPED_TRACE(o.name);
    const std::string heading = std::string("\n") + option_group_title(o.group) + ":\n";
    const size_t begin = help.find(heading);
    ASSERT_NE(begin, std::string::npos) << heading << " missing from\n" << help;
    const size_t end = help.find("\n\n", begin + 1);  // the blank line before the next heading, or npos
    const size_t at = help.find(std::string("\n  --") + o.name + " ", begin);
    EXPECT_TRUE(at != std::string::npos && at < end) << "--" << o.name << " not under " << heading << " in\n" << help;

    EXPECT_EQ(keys[o.name], command_line_only(o) ? 0 : 1);
    written += !command_line_only(o);
    EXPECT_EQ(listed(config_shape_keys(), o.name), o.on_resume == OnResume::shape ? 1 : 0);
    EXPECT_EQ(listed(config_behaviour_keys(), o.name), o.on_resume == OnResume::behaviour ? 1 : 0);
  }
  EXPECT_EQ(entries.size(), written) << "an INI key that is no option of the table";
}

// The help texts name only options that exist (they refer to each other as --name).
TEST(ConfigTable, HelpTextsNameRealOptions) {
  std::set<std::string> names;
  for (const Option& o : config_options()) names.insert(o.name);
  for (const Option& o : config_options())
    for (const std::string& f : flags_in(o.help))
      EXPECT_TRUE(names.count(f)) << "--" << o.name << "'s help names --" << f;
  // The scanners themselves.
  EXPECT_TRUE(is_option_name("d-model"));
  EXPECT_FALSE(is_option_name("d--model"));
  EXPECT_FALSE(is_option_name("Lr"));
  EXPECT_FALSE(is_option_name("lr-"));
  EXPECT_EQ(flags_in("use --lr and --min-lr, not -x"), (std::vector<std::string>{"lr", "min-lr"}));
}

// (c) On resume, a differing shape option is refused naming it and both values, a behaviour option
// is reported, any other is accepted silently.
TEST(ConfigTable, ResumeRefusesADifferentShapeOptionByName) {
  const std::string stored = config_to_ini(Config{});
  for (const Option& o : config_options()) {
    if (command_line_only(o)) continue;
    SCOPED_TRACE(o.name);
    Config now;
    set_other_value(now, o);
    const std::string flag = std::string("--") + o.name;
    std::string old_value, new_value;
    for (const auto& [k, v] : config_ini_entries(stored))
      if (k == o.name) old_value = v;
    for (const auto& [k, v] : config_ini_entries(config_to_ini(now)))
      if (k == o.name) new_value = v;
    const auto check = [&] { return config_check_compatible(stored, config_to_ini(now), "step_5/manifest.h5"); };
    switch (o.on_resume) {
      case OnResume::shape:
        EXPECT_THAT(error_of([&] { check(); }),
                    AllOf(HasSubstr("step_5/manifest.h5"),
                          HasSubstr(flag + " " + old_value + " in the checkpoint, " + new_value + " in this run")));
        break;
      case OnResume::behaviour: {
        const std::vector<std::string> warnings = check();
        ASSERT_EQ(warnings.size(), 1u);
        EXPECT_THAT(warnings[0], HasSubstr(flag + " " + old_value + " in the checkpoint"));
        break;
      }
      case OnResume::free:
        EXPECT_EQ(check(), std::vector<std::string>{});
        break;
    }
  }
}

// Which options must match is a contract with every checkpoint written so far: marking another
// option `shape` refuses those that differ in it, unmarking one loads a checkpoint into a model it
// does not fit. Change these lists only with the table, deliberately.
TEST(ConfigTable, ResumeComparesTheModelShapeOptions) {
  using Keys = std::set<std::string>;
  const std::vector<std::string>& shape = config_shape_keys();
  const std::vector<std::string>& behaviour = config_behaviour_keys();
  EXPECT_EQ(Keys(shape.begin(), shape.end()), (Keys{"layers", "d-model", "heads", "attn-experts", "experts", "d-ff",
                                                   "tokenizer", "block-type", "expert-d-ff"}));
  EXPECT_EQ(Keys(behaviour.begin(), behaviour.end()),
            (Keys{"attn-topk", "topk", "capacity-factor", "patch-size", "gate", "aux-loss", "z-loss", "precision"}));
}

// --eval-windows takes the word "all" (the whole split, as 0) beside a number, on the command line
// and in a --config file; anything else is refused naming the option.
TEST(EvalWindows, TakesAllOrANumber) {
  EXPECT_EQ(parse({"--eval-windows", "all"}).config.eval_windows, 0);
  EXPECT_EQ(parse({"--eval-windows", "37"}).config.eval_windows, 37);
  EXPECT_EQ(parse({}).config.eval_windows, Config{}.eval_windows);
  EXPECT_EQ(config_from_ini("eval-windows = all\n", "t.ini").eval_windows, 0);
  EXPECT_EQ(config_from_ini("eval-windows = 5\n", "t.ini").eval_windows, 5);
  for (const char* bad : {"every", "-1", "3x", "", "99999999999"})
    EXPECT_THAT(error_of([&] { parse({"--eval-windows", bad}); }), HasSubstr("--eval-windows")) << bad;
}

}  // namespace
}  // namespace uoe
