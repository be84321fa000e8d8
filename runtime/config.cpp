#include "runtime/config.hpp"

#include <boost/program_options.hpp>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <type_traits>
#include <variant>
#include <vector>

#include "runtime/cli.hpp"
#include "runtime/error.hpp"
#include "runtime/options.hpp"

namespace uoe {
namespace {

namespace po = boost::program_options;

// Help shows defaults with %g: Boost's own rendering of 0.1 is "0.10000000000000001".
std::string format_short(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// %.17g: enough digits for every double to read back bitwise equal.
std::string format_exact(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// An option bound to a Config field, with the field's current value as the default shown in help.
template <class T>
po::typed_value<T>* bound(T* field) {
  return po::value<T>(field)->default_value(*field);
}
po::typed_value<double>* bound(double* field) {
  return po::value<double>(field)->default_value(*field, format_short(*field));
}
po::typed_value<std::string>* bound(std::string* field) {
  // An empty default means "not set"; Boost would print it as "(=)".
  if (field->empty()) return po::value<std::string>(field);
  return po::value<std::string>(field)->default_value(*field);
}

// Options whose value Boost reads as text, by name: uint64_t ones, because Boost's lexical_cast
// turns "-1" into 2^64 - 1 for unsigned types, and --eval-windows, which also takes the word "all"
// (= 0, the whole split); text_values_store() converts them strictly.
using TextValues = std::map<std::string, std::string>;

// Binds one row of the option table (runtime/options.hpp) to its member of `c`.
void add_option(po::options_description& desc, const Option& o, Config& c, TextValues& texts) {
  std::visit(
      [&](auto member) {
        auto& field = c.*member;
        using T = std::remove_cvref_t<decltype(field)>;
        if constexpr (std::is_same_v<T, uint64_t>) {
          std::string& text = texts[o.name] = std::to_string(field);
          desc.add_options()(o.name, po::value<std::string>(&text)->default_value(text), o.help);
        } else if constexpr (std::is_same_v<T, int>) {
          if (std::holds_alternative<int Config::*>(o.field) && std::get<int Config::*>(o.field) == &Config::eval_windows) {
            std::string& text = texts[o.name] = std::to_string(field);
            desc.add_options()(o.name, po::value<std::string>(&text)->default_value(text), o.help);
          } else {
            desc.add_options()(o.name, bound(&field), o.help);
          }
        } else if constexpr (std::is_same_v<T, bool>) {
          desc.add_options()(o.name, bound(&field)->implicit_value(true), o.help);  // a bare --flag is 1
        } else {
          desc.add_options()(o.name, bound(&field), o.help);
        }
      },
      o.field);
}

// The option groups in the order --help prints them (OptionGroup), each with its rows of the table
// bound to the members of `c` (set when Boost notifies). Everything except "General" may also come
// from the --config file.
struct OptionGroups {
  static constexpr unsigned kHelpWidth = 100;  // columns of --help; descriptions start at most halfway
  std::vector<std::unique_ptr<po::options_description>> groups;  // indexed by OptionGroup

  OptionGroups(Config& c, TextValues& texts) {
    for (OptionGroup g : kOptionGroups)
      groups.push_back(std::make_unique<po::options_description>(option_group_title(g), kHelpWidth, kHelpWidth / 2));
    cli_add_help_and_version(group(OptionGroup::general));
    for (const Option& o : config_options()) add_option(group(o.group), o, c, texts);
  }
  po::options_description& group(OptionGroup g) const { return *groups[static_cast<size_t>(g)]; }

  po::options_description for_file() const {
    po::options_description all;
    for (OptionGroup g : kOptionGroups)
      if (g != OptionGroup::general) all.add(group(g));
    return all;
  }
  po::options_description for_command_line() const {
    po::options_description all(kHelpWidth, kHelpWidth / 2);
    for (OptionGroup g : kOptionGroups) all.add(group(g));
    return all;
  }
};

uint64_t uint64_parse(const std::string& text, const char* name) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty())
    fail("--", name, " '", text, "': expected an integer in [0, 2^64)");
  return value;
}

// After Boost's notify: the members read as text get their values.
void text_values_store(Config& c, const TextValues& texts) {
  for (const Option& o : config_options())
    if (const auto* member = std::get_if<uint64_t Config::*>(&o.field))
      c.**member = uint64_parse(texts.at(o.name), o.name);
  const std::string& windows = texts.at("eval-windows");
  if (windows == "all") {
    c.eval_windows = 0;
  } else {
    int v = 0;
    const char* end = windows.data() + windows.size();
    auto [ptr, ec] = std::from_chars(windows.data(), end, v);
    if (ec != std::errc() || ptr != end || windows.empty() || v < 0)
      fail("--eval-windows '", windows, "': expected 'all' or an integer in [0, ", INT32_MAX, "]");
    c.eval_windows = v;
  }
}

// How messages name an option: through the table, so a name is spelled only there.
std::string flag(OptionField field) { return option_flag(field); }

// A file the run reads: it must exist, be a regular readable file and (unless allow_empty) hold
// at least one byte. `option` names where the path came from.
void input_file_check(const std::string& path, const std::string& option, bool allow_empty) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) fail(option, " '", path, "': no such file");
  if (ec) fail(option, " '", path, "': ", ec.message());
  if (!fs::is_regular_file(st)) fail(option, " '", path, "': not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(option, " '", path, "': cannot be opened for reading");
  if (!allow_empty && in.peek() == std::ifstream::traits_type::eof())
    fail(option, " '", path, "': file is empty");
}

// The checks of config_validate, each naming the option(s) through the table.
void require_positive(const Config& c, int Config::*v) {
  if (c.*v <= 0) fail(flag(v), " ", c.*v, ": expected a positive integer");
}
void require_non_negative(const Config& c, int Config::*v) {
  if (c.*v < 0) fail(flag(v), " ", c.*v, ": expected an integer >= 0");
}
// Written as !(v >= 0) so that NaN fails too.
void require_non_negative(const Config& c, double Config::*v) {
  if (!(c.*v >= 0) || !std::isfinite(c.*v)) fail(flag(v), " ", c.*v, ": expected a finite number >= 0");
}
void require_divisible(const Config& c, int Config::*a, int Config::*b, const std::string& why) {
  if (c.*a % c.*b != 0) fail(flag(a), " ", c.*a, " is not divisible by ", flag(b), " ", c.*b, " (", why, ")");
}
void require_in_range(const Config& c, int Config::*v, int Config::*hi) {
  if (c.*v < 1 || c.*v > c.*hi)
    fail(flag(v), " ", c.*v, ": expected 1 <= ", flag(v), " <= ", flag(hi), " (", c.*hi, ")");
}

// The INI text of one option's value: doubles with every digit, bools as 0 | 1.
std::string ini_value(const Config& c, const Option& o) {
  return std::visit(
      [&c](auto member) {
        const auto& value = c.*member;
        if constexpr (std::is_same_v<std::remove_cvref_t<decltype(value)>, double>) {
          return format_exact(value);
        } else {
          std::ostringstream os;
          os << value;
          return os.str();
        }
      },
      o.field);
}

}  // namespace

ConfigParse config_parse(int argc, const char* const* argv, std::string* help_out) {
  ConfigParse out;
  Config& c = out.config;
  TextValues texts;
  const OptionGroups groups(c, texts);
  const po::options_description cmdline_options = groups.for_command_line();

  po::variables_map vm;
  cli_parse(argc, argv, cmdline_options, vm, /*notify=*/false);  // the --config file is stored next

  if (vm.count("help")) {
    if (help_out) {
      std::ostringstream os;
      os << "Usage: uoe-train [options]\n" << cmdline_options;
      *help_out = os.str();
    }
    out.exit_now = true;
    return out;
  }
  if (vm.count("version")) {
    out.version = out.exit_now = true;
    return out;
  }

  // Values stored first win, so the file only fills what the command line left unset.
  const Option& config = config_option(&Config::config_file);
  if (vm.count(config.name)) {
    const std::string path = vm[config.name].as<std::string>();
    input_file_check(path, flag(&Config::config_file), /*allow_empty=*/true);
    std::ifstream in(path);
    try {
      po::store(po::parse_config_file(in, groups.for_file()), vm);
    } catch (po::error& e) {
      fail(flag(&Config::config_file), " file '", path, "': ", cli_error_message(e));
    }
  }
  try {
    po::notify(vm);
  } catch (po::error& e) {
    fail(cli_error_message(e));
  }

  text_values_store(c, texts);
  config_validate(c);
  if (!c.data.empty()) input_file_check(c.data, flag(&Config::data), /*allow_empty=*/false);
  if (!c.val_data.empty()) input_file_check(c.val_data, flag(&Config::val_data), /*allow_empty=*/false);
  return out;
}

Config config_from_ini(const std::string& ini, const std::string& where) {
  Config c;
  TextValues texts;
  const OptionGroups groups(c, texts);
  po::variables_map vm;
  std::istringstream in(ini);
  try {
    po::store(po::parse_config_file(in, groups.for_file()), vm);
    po::notify(vm);
  } catch (po::error& e) {
    fail(where, ": ", cli_error_message(e));
  }
  text_values_store(c, texts);
  return c;
}

void config_validate(const Config& c) {
  using C = Config;
  // Sizes and counts first, so the relations below never divide by zero.
  for (int C::*v : {&C::layers, &C::d_model, &C::heads, &C::attn_experts, &C::attn_topk, &C::experts, &C::topk,
                    &C::d_ff, &C::patch_size, &C::seq_len, &C::batch_size, &C::micro_batches, &C::steps,
                    &C::log_every, &C::ep})
    require_positive(c, v);
  for (int C::*v : {&C::warmup, &C::eval_every, &C::eval_batches, &C::eval_windows, &C::threads, &C::checkpoint_every,
                    &C::keep_last, &C::data_offset})
    require_non_negative(c, v);
  if (!(c.checkpoint_share > 0 && c.checkpoint_share <= 1))
    fail(flag(&C::checkpoint_share), " ", c.checkpoint_share, ": expected a share of one core in (0, 1]");
  require_positive(c, &C::max_bad_steps);
  if (!(c.collective_timeout > 0) || !std::isfinite(c.collective_timeout))
    fail(flag(&C::collective_timeout), " ", c.collective_timeout, ": expected a finite number of seconds > 0");
  if (!c.resume.empty() && c.resume == "auto" && c.checkpoint_dir.empty())
    fail(flag(&C::resume), " auto needs ", flag(&C::checkpoint_dir), " (where to look for checkpoints)");
  if (c.block_type != "uoe" && c.block_type != "dense" && c.block_type != "moe")
    fail(flag(&C::block_type), " '", c.block_type, "': expected uoe, dense or moe");
  require_non_negative(c, &C::expert_d_ff);
  require_positive(c, &C::overlap_chunks);
  if (c.device != "cpu" && c.device != "cuda") fail(flag(&C::device), " '", c.device, "': expected cpu or cuda");
  if (c.recompute != "none" && c.recompute != "experts" && c.recompute != "blocks")
    fail(flag(&C::recompute), " '", c.recompute, "': expected none, experts or blocks");
  if (c.precision != "fp32" && c.precision != "bf16")
    fail(flag(&C::precision), " '", c.precision, "': expected fp32 or bf16");
  if (c.memory_limit != "auto") {
    const char* s = c.memory_limit.c_str();
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s, &end, 10);
    if (!std::isdigit(static_cast<unsigned char>(*s)) || *end != '\0' || errno == ERANGE || v == 0)
      fail(flag(&C::memory_limit), " '", c.memory_limit, "': expected auto or a number of bytes > 0");
  }
  if (!(c.sim_link_gbps >= 0) || !std::isfinite(c.sim_link_gbps))
    fail(flag(&C::sim_link_gbps), " ", c.sim_link_gbps, ": expected 0 (off) or a finite bandwidth > 0");
  if (!(c.sim_link_latency_us >= 0) || !std::isfinite(c.sim_link_latency_us))
    fail(flag(&C::sim_link_latency_us), " ", c.sim_link_latency_us, ": expected a finite latency >= 0");
  if (c.sim_link_latency_us > 0 && c.sim_link_gbps == 0)
    fail(flag(&C::sim_link_latency_us), " ", c.sim_link_latency_us, " needs ", flag(&C::sim_link_gbps),
         " (the link to delay)");

  // Shapes (docs/model.md, Notation).
  require_divisible(c, &C::d_model, &C::heads, "each head gets d-model/heads dimensions");
  if ((c.d_model / c.heads) % 2 != 0)
    fail(flag(&C::d_model), " ", c.d_model, " / ", flag(&C::heads), " ", c.heads, " gives head dimension ",
         c.d_model / c.heads, ": expected an even head dimension (RoPE rotates pairs)");
  // Block types (layers/model.hpp): uoe routes attention and MLP; moe only the MLP (dense
  // attention); dense nothing. Expert options of an unrouted part are ignored, so not checked.
  const bool attn_routed = c.block_type == "uoe", mlp_routed = c.block_type != "dense";
  if (c.expert_d_ff != 0 && c.block_type != "moe")
    fail(flag(&C::expert_d_ff), " ", c.expert_d_ff, " applies to ", flag(&C::block_type), " moe only (this is ",
         flag(&C::block_type), " ", c.block_type, "; uoe cuts ", flag(&C::d_ff), " into ", flag(&C::experts),
         " experts)");
  if (attn_routed) {
    require_divisible(c, &C::heads, &C::attn_experts, "each attention expert owns heads/attn-experts heads");
    require_in_range(c, &C::attn_topk, &C::attn_experts);
  }
  if (mlp_routed) {
    require_in_range(c, &C::topk, &C::experts);
    if (c.expert_d_ff == 0)
      require_divisible(c, &C::d_ff, &C::experts,
                        c.block_type == "moe"
                            ? "moe experts are d-ff/experts wide unless " + flag(&C::expert_d_ff) + " is given"
                            : "each MLP expert owns d-ff/experts hidden units");
  }
  require_divisible(c, &C::seq_len, &C::patch_size, "a patch never crosses a sequence");
  // Every rank of an expert-parallel group owns the same number of experts of each kind (dense
  // attention and the dense MLP are replicated on every rank instead).
  if (mlp_routed)
    require_divisible(c, &C::experts, &C::ep, "each rank of an expert-parallel group owns experts/ep MLP experts");
  if (attn_routed)
    require_divisible(c, &C::attn_experts, &C::ep,
                      "each rank of an expert-parallel group owns attn-experts/ep attention experts");
  if (!(c.capacity_factor >= 0) || !std::isfinite(c.capacity_factor))
    fail(flag(&C::capacity_factor), " ", c.capacity_factor, ": expected 0 (dropless) or a finite number > 0");
  if (c.gate != "renorm" && c.gate != "sum" && c.gate != "prob")
    fail(flag(&C::gate), " '", c.gate, "': expected renorm, sum or prob");
  require_non_negative(c, &C::aux_loss);
  require_non_negative(c, &C::z_loss);

  // Data.
  if (c.tokenizer != "byte" && c.tokenizer != "word" && c.tokenizer != "sentencepiece")
    fail(flag(&C::tokenizer), " '", c.tokenizer, "': expected byte, word or sentencepiece");
  if (!(c.val_fraction > 0 && c.val_fraction < 1))
    fail(flag(&C::val_fraction), " ", c.val_fraction, ": expected a number strictly between 0 and 1");

  // Optimisation.
  if (!(c.lr > 0) || !std::isfinite(c.lr)) fail(flag(&C::lr), " ", c.lr, ": expected a finite number > 0");
  if (!(c.min_lr >= 0 && c.min_lr <= c.lr))
    fail(flag(&C::min_lr), " ", c.min_lr, ": expected 0 <= ", flag(&C::min_lr), " <= ", flag(&C::lr), " (", c.lr, ")");
  require_non_negative(c, &C::weight_decay);
  require_non_negative(c, &C::clip);
}

// Every option of the file parser, one `name = value` line each under a `# topic` comment;
// config_parse reads it back to the same Config. The General options (--config) are left out (the
// text is the config). Boost's INI reader trims values and cuts them at '#', so strings with those
// (e.g. such paths) do not round-trip.
std::string config_to_ini(const Config& c) {
  std::ostringstream os;
  for (OptionGroup g : kOptionGroups) {
    if (g == OptionGroup::general) continue;
    std::string topic = option_group_title(g);
    for (char& ch : topic) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    os << "# " << topic << "\n";
    for (const Option& o : config_options())
      if (o.group == g) os << o.name << " = " << ini_value(c, o) << "\n";
  }
  return os.str();
}

}  // namespace uoe
