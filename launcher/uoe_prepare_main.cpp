// uoe-prepare: text -> token files, once, before training (like Megatron's preprocess_data.py).
//
//   uoe-prepare --data corpus.txt [--val-data val.txt | --val-fraction 0.1] [--tokenizer byte|word]
//               [--shard-size MB] --output data/corpus
//
// writes each split as shards of at most --shard-size MB plus an index (data/corpus.train.idx with
// data/corpus.train.tok, or data/corpus.train-00000.tok, ... when it takes more than one shard; the
// same for .val) and, word level, data/corpus.vocab (formats in runtime/token_file.hpp). Tokenization and the train/validation split are uoe-train's own
// (data_from_text), so `uoe-train --data P.train.idx --val-data P.val.idx` trains on exactly the
// token streams that `uoe-train --data corpus.txt` (same --val-data / --val-fraction / --tokenizer)
// builds from the text, and logs the same losses; it just skips reading and tokenizing the text.
// Exit codes: 0 success (or --help, --version), 2 bad command line, 1 any other failure (unreadable text, ...).
#include <boost/program_options.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "parallel/mpi_version.hpp"
#include "runtime/cli.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/token_file.hpp"
#include "runtime/version.hpp"

namespace po = boost::program_options;

namespace {

struct PrepareOptions {
  std::string data, val_data, tokenizer = "byte", output;
  double val_fraction = 0.1;
  double shard_mb = static_cast<double>(uoe::kDefaultShardBytes) / 1e6;  // --shard-size, MB of token ids
};

// Parses the command line; returns false after --help or --version. Throws uoe::Error naming the option.
bool parse(int argc, char** argv, PrepareOptions& o) {
  po::options_description desc("Options", 100, 50);
  desc.add_options()
      ("data", po::value(&o.data), "text file to prepare (default: the built-in corpus)")
      ("val-data", po::value(&o.val_data), "validation text file (default: the last --val-fraction of --data)")
      ("val-fraction", po::value(&o.val_fraction)->default_value(0.1, "0.1"), "share of --data held out for validation, in (0, 1)")
      ("tokenizer", po::value(&o.tokenizer)->default_value("byte"), "byte | word")
      ("output", po::value(&o.output), "output prefix: writes PREFIX.train.idx, PREFIX.val.idx and their shards (and PREFIX.vocab for word)")
      ("shard-size", po::value(&o.shard_mb)->default_value(o.shard_mb, "1000"), "at most this many MB (10^6 bytes) of token ids per shard");
  uoe::cli_add_help_and_version(desc);
  po::variables_map vm;
  uoe::cli_parse(argc, argv, desc, vm);
  if (vm.count("version")) {
    std::cout << uoe::version_report("uoe-prepare", uoe::comm_library_versions());
    return false;
  }
  if (vm.count("help")) {
    std::cout << "Usage: uoe-prepare [--data TEXT] [--val-data TEXT | --val-fraction F] [--tokenizer byte|word] "
                 "--output PREFIX\n\n"
                 "Tokenizes text once into memory-mapped token files for uoe-train (same tokenizer and split as\n"
                 "uoe-train on the text): then train with --data PREFIX.train.idx --val-data PREFIX.val.idx.\n\n"
              << desc;
    return false;
  }
  if (o.output.empty()) uoe::fail("--output PREFIX is required (e.g. --output data/corpus)");
  if (o.tokenizer != "byte" && o.tokenizer != "word")
    uoe::fail("--tokenizer must be 'byte' or 'word', got '", o.tokenizer, "'");
  if (!(o.shard_mb * 1e6 >= 4.0) || !std::isfinite(o.shard_mb))
    uoe::fail("--shard-size must be a number of MB that holds at least one token (>= 0.000004), got ", o.shard_mb);
  if (o.val_data.empty() && !(o.val_fraction > 0.0 && o.val_fraction < 1.0))
    uoe::fail("--val-fraction must be in (0, 1) when no --val-data is given, got ", o.val_fraction);
  for (const std::string* p : {&o.data, &o.val_data})
    if (!p->empty() && uoe::token_file_detect(*p))
      uoe::fail(p == &o.data ? "--data" : "--val-data", " '", *p,
                "' is already a token file; uoe-prepare reads text");
  return true;
}

std::string megabytes(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", ec ? 0.0 : static_cast<double>(n) / 1e6);
  return buf;
}

int run(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const uoe::TokenizerKind kind = o.tokenizer == "word" ? uoe::TokenizerKind::word : uoe::TokenizerKind::byte;
  const std::string train_text = o.data.empty() ? uoe::data_builtin_corpus() : uoe::data_read_text(o.data, "--data");
  std::string val_text;
  if (!o.val_data.empty()) val_text = uoe::data_read_text(o.val_data, "--val-data");
  const std::string source = o.data.empty() ? "the built-in corpus" : "'" + o.data + "'";
  // seq_len 1: any split of at least 2 tokens is kept; uoe-train checks its own --seq-len on load.
  const uoe::Dataset ds = uoe::data_from_text(train_text, o.val_data.empty() ? nullptr : &val_text,
                                              o.val_fraction, kind, /*seq_len=*/1, source);
  const std::filesystem::path parent = std::filesystem::path(o.output).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) uoe::fail("--output: cannot create the directory '", parent.string(), "' (", ec.message(), ")");
  }
  const std::vector<std::string> written =
      uoe::token_files_write(ds, o.output, static_cast<uint64_t>(std::llround(o.shard_mb * 1e6)));
  const size_t shards = written.size() - (kind == uoe::TokenizerKind::word ? 3 : 2);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const int V = ds.vocab.size();
  std::printf("uoe-prepare: %s, %s-level, V=%d, %s tokens\n", source.c_str(), o.tokenizer.c_str(), V,
              V <= 65536 ? "uint16" : "uint32");
  std::printf("  train: %zu tokens -> %s\n", ds.train.size(), written[0].c_str());
  std::printf("  val:   %zu tokens -> %s%s\n", ds.val.size(), written[1].c_str(),
              o.val_data.empty() ? " (the last --val-fraction of the text)" : "");
  for (size_t i = written.size() - shards; i < written.size(); ++i)
    std::printf("  shard: %s (%s)\n", written[i].c_str(), megabytes(written[i]).c_str());
  if (kind == uoe::TokenizerKind::word) {
    size_t unknown = 0;
    for (int32_t id : ds.val.to_vector()) unknown += id == 0;
    std::printf("  vocab: %d words -> %s; %.2f%% of validation tokens are <unk> (not in the training split)\n", V,
                written[2].c_str(), ds.val.empty() ? 0.0 : 100.0 * static_cast<double>(unknown) / ds.val.size());
  }
  std::printf("  done in %.1fs; train with: uoe-train --data %s --val-data %s%s\n", secs, written[0].c_str(),
              written[1].c_str(), kind == uoe::TokenizerKind::word ? " --tokenizer word" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  PrepareOptions o;
  return uoe::cli_main("uoe-prepare", [&] { return parse(argc, argv, o); }, [&] { return run(o); });
}
