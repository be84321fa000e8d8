// uoe-prepare: text -> token files, once, before training (like Megatron's preprocess_data.py).
//
//   uoe-prepare --data corpus.txt [--val-data val.txt | --val-fraction 0.1] [--tokenizer byte|word]
//               [--shard-size MB] [--threads N] [--progress] --output data/corpus
//   uoe-prepare --data a.txt b.txt dir/ [--inputs-from list.txt] ...
//   uoe-prepare ... [--eod file|blank-line | --eod-separator STR]
//   uoe-prepare ... --tokenizer word [--vocab-size N] [--min-count C]
//   uoe-prepare ... --tokenizer sentencepiece (--vocab-size N [--model-type bpe|unigram] | --tokenizer-model M.model)
//
// writes each split as shards of at most --shard-size MB plus an index (data/corpus.train.idx with
// data/corpus.train.tok, or data/corpus.train-00000.tok, ... when it takes more than one shard; the
// same for .val) and, word level, data/corpus.vocab, sentencepiece level, data/corpus.model (formats
// in runtime/token_file.hpp). Byte and word: tokenization and the train/validation split are
// uoe-train's own (data_from_text), so `uoe-train --data P.train.idx --val-data P.val.idx` trains on
// exactly the token streams that `uoe-train --data corpus.txt` (same --val-data / --val-fraction /
// --tokenizer) builds from the text, and logs the same losses; it just skips reading and tokenizing
// the text. --vocab-size / --min-count then keep the most frequent words (runtime/tokenizer.hpp,
// word_vocab_limit); without them the ids are uoe-train's.
// Sentencepiece (runtime/tokenizer.hpp): without --val-data the split is by text, at the first line
// start at or after the last --val-fraction of the bytes, so no validation line is seen by the model's
// training (which reads sentencepiece_sample_lines of the training part) and the validation split's
// source bytes are known (val_bpb); the text is encoded on --threads threads, the same ids for any count.
//
// Inputs. --data (and --val-data) take one or more paths, each a text file or a directory; a
// directory stands for every regular file below it (recursively, symbolic links to files followed),
// sorted by path, byte-wise. Globs are the shell's: `--data shards/*.txt` arrives as the files it
// expands to. --inputs-from FILE adds the paths listed in FILE, one a line (empty lines skipped),
// after those of --data. The texts are read in that order and joined into one, with a "\n" put
// between two files when the first does not end with one (so no token spans two files; the
// joining "\n" counts as source bytes); one file is read exactly as before.
//
// Threads. Tokenizing runs on --threads compute threads (runtime/threads.hpp; 0 = the CPUs this
// process may run on, runtime/cpu_affinity.hpp): the text is cut after "\n"s into one piece per
// thread (pieces of at most 4 MB; runtime/tokenizer.hpp, text_line_pieces), which no tokenizer
// merges across, so the files written are byte-identical for any thread count. Training a
// SentencePiece model is the library's own (its num_threads: the same --threads).
//
// Progress. While tokenizing, a line on stderr shows the MB done of the total, MB/s and the time
// left, redrawn at most 4 times a second, when stderr is a terminal or with --progress; the summary
// on stdout always says how many MB were tokenized at what rate on how many threads.
//
// Documents. --eod file (each input file is a document), --eod blank-line (an empty line ends a
// document and is dropped) or --eod-separator STR (so does a line that is exactly STR) put an
// end-of-document token after every document (runtime/data.hpp, data_from_spans: byte level id 256,
// V = 257; word level the word "<eod>", the last id; sentencepiece the model's </s>), recorded in
// the token files' header and index (runtime/token_file.hpp), and each split's documents file
// (PREFIX.train.docs: where each document starts, listed in the index) for uoe-train
// --windows-within-documents. With --eod, every tokenizer splits by
// text as sentencepiece does (a document cut by the split gets its token in the validation split).
// Exit codes: 0 success (or --help, --version), 2 bad command line, 1 any other failure (unreadable text, ...).
#include <boost/program_options.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "parallel/mpi_version.hpp"
#include "runtime/cli.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/threads.hpp"
#include "runtime/token_file.hpp"
#include "runtime/tokenizer.hpp"
#include "runtime/version.hpp"

namespace po = boost::program_options;

namespace {

struct PrepareOptions {
  std::vector<std::string> data_given, val_given;  // --data, --val-data as given
  std::string inputs_from;                         // --inputs-from
  std::vector<std::string> data, val_data;         // the text files, in order (expand_inputs)
  std::string tokenizer = "byte", output;
  std::string eod = "none";  // --eod: none | file | blank-line; "separator" with --eod-separator
  std::string eod_separator;
  bool progress = false;
  double val_fraction = 0.1;
  // Tokenizer options (check_tokenizer_options says which tokenizer takes which).
  int64_t vocab_size = 0, min_count = 1;
  std::string model_type = "bpe", tokenizer_model;
  int threads = 0;  // --threads; run() resolves 0 to default_threads()
  double shard_mb = static_cast<double>(uoe::kDefaultShardBytes) / 1e6;  // --shard-size, MB of token ids
};

// Which tokenizer takes which option; --tokenizer-model alone means --tokenizer sentencepiece.
void check_tokenizer_options(const po::variables_map& vm, PrepareOptions& o) {
  const bool model_given = vm.count("tokenizer-model") > 0;
  if (model_given && vm["tokenizer"].defaulted()) o.tokenizer = "sentencepiece";
  uoe::tokenizer_kind_parse(o.tokenizer, "--tokenizer");
  const auto only = [&](const char* option, const char* tokenizers) {
    if (vm.count(option) && !vm[option].defaulted() && std::string(tokenizers).find(o.tokenizer) == std::string::npos)
      uoe::fail("--", option, " applies to --tokenizer ", tokenizers, ", not to --tokenizer ", o.tokenizer);
  };
  only("vocab-size", "word or sentencepiece");
  only("min-count", "word");
  only("model-type", "sentencepiece");
  only("tokenizer-model", "sentencepiece");
  if (o.vocab_size < 0) uoe::fail("--vocab-size must be at least 0, got ", o.vocab_size);
  if (o.min_count < 1) uoe::fail("--min-count must be at least 1, got ", o.min_count);
  if (o.threads < 0) uoe::fail("--threads must be at least 0 (0 = the CPUs this process may run on), got ", o.threads);
  if (o.tokenizer == "word" && o.vocab_size == 1)
    uoe::fail("--vocab-size 1 leaves only <unk>; give at least 2, or 0 for every word");
  if (o.tokenizer != "sentencepiece") return;
  if (model_given && (vm.count("vocab-size") || !vm["model-type"].defaulted()))
    uoe::fail("--tokenizer-model '", o.tokenizer_model, "' fixes the vocabulary: drop --vocab-size and --model-type");
  if (!model_given && o.vocab_size < 1)
    uoe::fail("--tokenizer sentencepiece needs --vocab-size N (to train a model on --data) or --tokenizer-model FILE");
  if (o.model_type != "bpe" && o.model_type != "unigram")
    uoe::fail("--model-type must be 'bpe' or 'unigram', got '", o.model_type, "'");
}

// The text files that `given` paths stand for (see Inputs at the top), appended to `out`. `where`
// names the option (or the list file's line) in errors.
void add_inputs(const std::string& path, const std::string& where, std::vector<std::string>& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) uoe::fail(where, ": '", path, "' does not exist");
  if (ec) uoe::fail(where, ": '", path, "' cannot be examined (", ec.message(), ")");
  if (st.type() != fs::file_type::directory) {
    out.push_back(path);  // a file (data_read_text names it if it is unreadable, empty or binary)
    return;
  }
  std::vector<std::string> files;
  fs::recursive_directory_iterator it(path, ec), end;
  if (ec) uoe::fail(where, ": directory '", path, "' cannot be read (", ec.message(), ")");
  for (; it != end; it.increment(ec)) {
    if (ec) uoe::fail(where, ": directory '", path, "' cannot be read (", ec.message(), ")");
    std::error_code fec;
    if (it->is_regular_file(fec)) files.push_back(it->path().string());
  }
  if (ec) uoe::fail(where, ": directory '", path, "' cannot be read (", ec.message(), ")");
  if (files.empty()) uoe::fail(where, ": directory '", path, "' holds no regular file (searched recursively)");
  std::sort(files.begin(), files.end());
  out.insert(out.end(), files.begin(), files.end());
}

// Resolves --data, --inputs-from and --val-data into o.data and o.val_data; a file given twice
// (also through two paths) is refused: it would be trained on twice, or validate on training text.
void expand_inputs(PrepareOptions& o) {
  for (const std::string& p : o.data_given) add_inputs(p, "--data", o.data);
  if (!o.inputs_from.empty()) {
    const std::string list = uoe::data_read_text(o.inputs_from, "--inputs-from");
    size_t line_no = 0, listed = 0;
    for (size_t i = 0; i < list.size();) {
      size_t end = list.find('\n', i);
      if (end == std::string::npos) end = list.size();
      std::string line = list.substr(i, end - i);
      i = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      ++listed;
      add_inputs(line, "--inputs-from '" + o.inputs_from + "' line " + std::to_string(line_no), o.data);
    }
    if (listed == 0) uoe::fail("--inputs-from '", o.inputs_from, "' lists no path (one path a line)");
  }
  for (const std::string& p : o.val_given) add_inputs(p, "--val-data", o.val_data);
  std::set<std::string> seen;
  for (const auto* files : {&o.data, &o.val_data})
    for (const std::string& p : *files) {
      std::error_code ec;
      const std::string canonical = std::filesystem::weakly_canonical(p, ec).string();
      if (!seen.insert(ec ? p : canonical).second)
        uoe::fail(files == &o.data ? "--data" : "--val-data", ": the file '", p,
                  "' is given twice (a file is read once: check overlapping directories, globs and --inputs-from)");
    }
}

// Parses the command line; returns false after --help or --version. Throws uoe::Error naming the option.
bool parse(int argc, char** argv, PrepareOptions& o) {
  po::options_description desc("Options", 100, 50);
  desc.add_options()
      ("data", po::value(&o.data_given)->multitoken()->composing(),
       "text files or directories (every regular file below, recursively, sorted by path) to prepare, joined in "
       "order (default: the built-in corpus)")
      ("inputs-from", po::value(&o.inputs_from), "a file listing more --data paths, one a line (after those of --data)")
      ("val-data", po::value(&o.val_given)->multitoken()->composing(),
       "validation text files or directories (default: the last --val-fraction of --data)")
      ("val-fraction", po::value(&o.val_fraction)->default_value(0.1, "0.1"), "share of --data held out for validation, in (0, 1)")
      ("tokenizer", po::value(&o.tokenizer)->default_value("byte"), "byte | word | sentencepiece")
      ("vocab-size", po::value(&o.vocab_size), "word: keep the N most frequent entries, <unk> included (default: all); "
                                               "sentencepiece: the pieces of the model to train")
      ("min-count", po::value(&o.min_count)->default_value(1), "word: keep words seen at least this often in the training split")
      ("model-type", po::value(&o.model_type)->default_value("bpe"), "sentencepiece: bpe | unigram")
      ("tokenizer-model", po::value(&o.tokenizer_model), "sentencepiece: use this .model file instead of training one")
      ("threads", po::value(&o.threads)->default_value(0),
       "tokenizing (and SentencePiece training) threads (0 = the CPUs this process may run on); the output is the same "
       "for any count")
      ("eod", po::value(&o.eod)->default_value("none"),
       "end-of-document token after every document: none | file (each input file is a document) | blank-line "
       "(an empty line ends a document); byte level then has V=257")
      ("eod-separator", po::value(&o.eod_separator),
       "end-of-document token where a line is exactly STR (the line itself is dropped), e.g. '<|endoftext|>'")
      ("progress", po::bool_switch(&o.progress), "show the progress line on stderr even when it is not a terminal")
      ("output", po::value(&o.output), "output prefix: writes PREFIX.train.idx, PREFIX.val.idx and their shards (and "
                                       "PREFIX.vocab for word, PREFIX.model for sentencepiece)")
      ("shard-size", po::value(&o.shard_mb)->default_value(o.shard_mb, "1000"), "at most this many MB (10^6 bytes) of token ids per shard");
  uoe::cli_add_help_and_version(desc);
  po::variables_map vm;
  uoe::cli_parse(argc, argv, desc, vm);
  if (vm.count("version")) {
    std::cout << uoe::version_report("uoe-prepare", uoe::comm_library_versions());
    return false;
  }
  if (vm.count("help")) {
    std::cout << "Usage: uoe-prepare [--data TEXT|DIR...] [--inputs-from LIST] [--val-data TEXT|DIR... | --val-fraction F]\n"
                 "                   [--tokenizer byte|word] [--threads N] [--progress] [--eod file|blank-line | "
                 "--eod-separator STR] --output PREFIX\n"
                 "       uoe-prepare ... --tokenizer word [--vocab-size N] [--min-count C]\n"
                 "       uoe-prepare ... --tokenizer sentencepiece (--vocab-size N [--model-type bpe|unigram] | "
                 "--tokenizer-model M.model)\n\n"
                 "Tokenizes text once into memory-mapped token files for uoe-train (same tokenizer and split as\n"
                 "uoe-train on the text): then train with --data PREFIX.train.idx --val-data PREFIX.val.idx.\n"
                 "Several files are joined in the order given (a directory: every regular file below it, sorted by\n"
                 "path; globs are the shell's). The output is byte-identical for any --threads. --eod puts an\n"
                 "end-of-document token after every document (byte level: V=257; word: the word <eod>;\n"
                 "sentencepiece: the model's </s>); with it the validation split is cut by text at a line start,\n"
                 "and PREFIX.train.docs records where documents start (uoe-train --windows-within-documents).\n\n"
              << desc;
    return false;
  }
  if (o.output.empty()) uoe::fail("--output PREFIX is required (e.g. --output data/corpus)");
  check_tokenizer_options(vm, o);
  if (!(o.shard_mb * 1e6 >= 4.0) || !std::isfinite(o.shard_mb))
    uoe::fail("--shard-size must be a number of MB that holds at least one token (>= 0.000004), got ", o.shard_mb);
  if (o.val_given.empty() && !(o.val_fraction > 0.0 && o.val_fraction < 1.0))
    uoe::fail("--val-fraction must be in (0, 1) when no --val-data is given, got ", o.val_fraction);
  if (o.eod != "none" && o.eod != "file" && o.eod != "blank-line")
    uoe::fail("--eod must be 'none', 'file' or 'blank-line', got '", o.eod, "'");
  if (vm.count("eod-separator")) {
    if (!vm["eod"].defaulted())
      uoe::fail("--eod ", o.eod, " and --eod-separator are two rules for the same token: give one");
    if (o.eod_separator.empty() || o.eod_separator.find('\n') != std::string::npos)
      uoe::fail("--eod-separator must be a non-empty line of text, got '", o.eod_separator, "'");
    o.eod = "separator";
  }
  expand_inputs(o);
  if (o.eod == "file" && o.data.size() < 2)
    uoe::fail("--eod file makes each input file a document, but --data gives ",
              o.data.empty() ? std::string("the built-in corpus") : "one file ('" + o.data[0] + "')",
              ": give the corpus as several files, or use --eod blank-line");
  for (const auto* files : {&o.data, &o.val_data})
    for (const std::string& p : *files)
      if (uoe::token_file_detect(p))
        uoe::fail(files == &o.data ? "--data" : "--val-data", " '", p, "' is already a token file; uoe-prepare reads text");
  return true;
}

// "1m05s", "2h03m": the progress line's time left.
std::string duration_text(double s) {
  char buf[32];
  const auto t = static_cast<long long>(std::max(0.0, s));
  if (t < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  return buf;
}

// Tokenizing progress (see Progress at the top): add() is called from the compute threads with the
// bytes of each finished piece; the line is drawn by whichever thread gets the lock, at most every
// 0.25 s. finish() ends the line and returns the seconds since start().
class Progress {
 public:
  Progress(double total_bytes, bool show) : total_(total_bytes), show_(show) {}
  void start() { t0_ = last_ = std::chrono::steady_clock::now(); }
  void add(size_t bytes) {
    const size_t done = done_.fetch_add(bytes) + bytes;
    if (!show_) return;
    const std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    draw(static_cast<double>(done), std::chrono::duration<double>(now - t0_).count());
  }
  double finish() {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    if (show_) {
      draw(static_cast<double>(done_.load()), secs);
      std::fputc('\n', stderr);
    }
    return secs;
  }

 private:
  void draw(double done, double secs) {
    const double rate = secs > 0 ? done / 1e6 / secs : 0.0;
    const std::string left = rate > 0 ? duration_text((total_ - done) / 1e6 / rate) : "?";
    std::fprintf(stderr, "\r  tokenizing: %.1f / %.1f MB (%.0f%%), %.1f MB/s, %s left   ", done / 1e6, total_ / 1e6,
                 total_ > 0 ? 100.0 * done / total_ : 100.0, rate, left.c_str());
    std::fflush(stderr);
  }
  double total_;
  bool show_;
  std::atomic<size_t> done_{0};
  std::mutex mutex_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now(), last_ = t0_;
};

// The texts of `files` joined in order (see Inputs at the top); one file exactly as it is. `ends`,
// when given, receives where each file's text ends in the result; `join` false (--eod file) puts
// nothing between files (the end-of-document token separates them).
std::string read_inputs(const std::vector<std::string>& files, const char* option, std::vector<size_t>* ends = nullptr,
                        bool join = true) {
  if (files.size() == 1) {
    std::string text = uoe::data_read_text(files[0], option);
    if (ends != nullptr) ends->push_back(text.size());
    return text;
  }
  size_t total = 0;
  for (const std::string& f : files) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(f, ec);
    if (!ec) total += static_cast<size_t>(n) + 1;
  }
  std::string text;
  text.reserve(total);
  for (const std::string& f : files) {
    const std::string t = uoe::data_read_text(f, option);
    if (join && !text.empty() && text.back() != '\n') text += '\n';
    text += t;
    if (ends != nullptr) ends->push_back(text.size());
  }
  return text;
}

// Documents (--eod): [begin, end) byte ranges of `text`, whose files end at `ends`. --eod file:
// each file; --eod blank-line: within each file, the maximal runs of lines that are not empty (a
// line that is "\n" or "\r\n" alone ends a document and belongs to none); --eod-separator STR:
// within each file, the runs of lines between lines that are exactly STR (before "\n" or "\r\n").
std::vector<std::pair<size_t, size_t>> documents(std::string_view text, const std::vector<size_t>& ends,
                                                 const std::string& rule, const std::string& separator) {
  std::vector<std::pair<size_t, size_t>> docs;
  size_t file_begin = 0;
  for (const size_t file_end : ends) {
    if (rule == "file") {
      docs.emplace_back(file_begin, file_end);
    } else {
      size_t doc = std::string_view::npos;  // start of the open document
      for (size_t i = file_begin; i < file_end;) {
        size_t e = text.find('\n', i);
        e = e == std::string_view::npos || e >= file_end ? file_end : e + 1;
        std::string_view line = text.substr(i, e - i);
        bool blank = line == "\n" || line == "\r\n";
        if (rule == "separator") {
          if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
          if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
          blank = line == separator;
        }
        if (blank && doc != std::string_view::npos) {
          docs.emplace_back(doc, i);
          doc = std::string_view::npos;
        } else if (!blank && doc == std::string_view::npos) {
          doc = i;
        }
        i = e;
      }
      if (doc != std::string_view::npos) docs.emplace_back(doc, file_end);
    }
    file_begin = file_end;
  }
  return docs;
}

// The documents' parts inside [lo, hi) as spans; a document cut by hi has no end-of-document token
// in this split (it continues in the next). `count` receives the documents that end inside.
std::vector<uoe::TextSpan> document_spans(std::string_view text, const std::vector<std::pair<size_t, size_t>>& docs,
                                          size_t lo, size_t hi, size_t& count) {
  std::vector<uoe::TextSpan> spans;
  count = 0;
  for (const auto& [b, e] : docs) {
    const size_t begin = std::max(b, lo), end = std::min(e, hi);
    if (begin >= end) continue;
    spans.push_back({text.substr(begin, end - begin), e <= hi});
    count += e <= hi;
  }
  return spans;
}

// How the summary and messages name a list of input files.
std::string inputs_label(const std::vector<std::string>& files) {
  if (files.empty()) return "";
  if (files.size() == 1) return "'" + files[0] + "'";
  return std::to_string(files.size()) + " files ('" + files.front() + "' ... '" + files.back() + "')";
}

std::string megabytes(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", ec ? 0.0 : static_cast<double>(n) / 1e6);
  return buf;
}

// Sentencepiece: split the text, train or read the model, encode (see the top of this file).
// The split by text (sentencepiece, and every tokenizer with --eod; see the top of this file): the
// validation split from the first line start at or after the last --val-fraction of the bytes, or
// the --val-data text.
struct TextSplit {
  std::string_view train, val;
  size_t cut = 0;  // where val starts in the --data text (0 when it is --val-data)
  std::string train_label, val_label;
};

TextSplit split_by_text(const PrepareOptions& o, const std::string& train_text, const std::string* val_text,
                        const std::string& source) {
  TextSplit s;
  std::string_view& train = s.train;
  std::string_view& val = s.val;
  train = train_text;
  std::string& train_label = s.train_label;
  std::string& val_label = s.val_label;
  train_label = source;
  val_label = inputs_label(o.val_data);
  if (val_text != nullptr) {
    val = *val_text;
  } else {
    const size_t n = train_text.size();
    size_t cut = n - static_cast<size_t>(std::llround(static_cast<double>(n) * o.val_fraction));
    const size_t nl = cut == 0 ? std::string::npos : train_text.find('\n', cut - 1);
    cut = nl == std::string::npos ? n : nl + 1;
    if (cut >= n)
      uoe::fail(source, " has no line start in its last --val-fraction ", o.val_fraction,
                " of bytes, so no validation split can be cut there: give --val-data, or a larger --val-fraction");
    train = train.substr(0, cut);
    val = std::string_view(train_text).substr(cut);
    train_label = "the training split of " + source;
    val_label = "the validation split of " + source + " (from byte " + std::to_string(cut) + ")";
    s.cut = cut;
  }
  return s;
}

// The SentencePiece model: --tokenizer-model, or one trained on the training split.
uoe::Vocab sentencepiece_model(const PrepareOptions& o, std::string_view train, const std::string& train_label,
                               int threads) {
  uoe::Vocab vocab;
  const auto t0 = std::chrono::steady_clock::now();
  if (!o.tokenizer_model.empty()) {
    vocab = uoe::sentencepiece_vocab_read(o.tokenizer_model, "--tokenizer-model");
  } else {
    uoe::SentencePieceTraining how;
    how.vocab_size = static_cast<int>(std::min<int64_t>(o.vocab_size, INT32_MAX));
    how.model_type = o.model_type;
    how.threads = threads;
    const size_t sample = train.size() <= uoe::kSentencePieceSampleBytes ? train.size() : uoe::kSentencePieceSampleBytes;
    std::printf("uoe-prepare: training a SentencePiece %s model of %d pieces on %.1f MB of %s\n", o.model_type.c_str(),
                how.vocab_size, static_cast<double>(sample) / 1e6, train_label.c_str());
    std::fflush(stdout);
    vocab = uoe::sentencepiece_train(train, how, train_label);
    std::printf("  model trained in %.1fs\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return vocab;
}

uoe::Dataset prepare_sentencepiece(const PrepareOptions& o, const std::string& train_text, const std::string* val_text,
                                   const std::string& source, int threads, Progress& progress) {
  const TextSplit split = split_by_text(o, train_text, val_text, source);
  const std::string_view train = split.train, val = split.val;
  const std::string &train_label = split.train_label, &val_label = split.val_label;
  uoe::Dataset ds;
  ds.source = source;
  ds.vocab = sentencepiece_model(o, train, train_label, threads);
  const auto t1 = std::chrono::steady_clock::now();
  const auto tokenizer = uoe::tokenizer_for(ds.vocab);
  const uoe::TextProgress on_bytes = [&progress](size_t bytes) { progress.add(bytes); };
  progress.start();
  ds.train = uoe::tokenizer_encode_parallel(*tokenizer, train, threads, uoe::kTextPieceBytes, on_bytes);
  ds.val = uoe::tokenizer_encode_parallel(*tokenizer, val, threads, uoe::kTextPieceBytes, on_bytes);
  ds.train_bytes = static_cast<double>(train.size());  // the source bytes of each split (val_bpb)
  ds.val_bytes = static_cast<double>(val.size());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::printf("  encoded %.1f MB in %.2fs (%.1f MB/s); %.3f bytes per token in validation (val_bpb = val_loss x "
              "%.5f / ln 2)\n",
              static_cast<double>(train.size() + val.size()) / 1e6, secs,
              secs > 0 ? static_cast<double>(train.size() + val.size()) / 1e6 / secs : 0.0,
              ds.val.empty() ? 0.0 : static_cast<double>(val.size()) / static_cast<double>(ds.val.size()),
              val.empty() ? 0.0 : static_cast<double>(ds.val.size()) / static_cast<double>(val.size()));
  for (const auto& [n, label] : {std::pair{ds.train.size(), &train_label}, std::pair{ds.val.size(), &val_label}})
    if (n < 2) uoe::fail(*label, " encodes to ", n, " tokens; a split needs at least 2 (one input and its target)");
  return ds;
}

// --eod: the text split as sentencepiece splits it (split_by_text), each split's documents
// tokenized with the end-of-document token after each (runtime/data.hpp, data_from_spans).
uoe::Dataset prepare_documents(const PrepareOptions& o, uoe::TokenizerKind kind, const std::string& train_text,
                               const std::vector<size_t>& train_ends, const std::string* val_text,
                               const std::vector<size_t>& val_ends, const std::string& source, int threads,
                               Progress& progress) {
  const TextSplit split = split_by_text(o, train_text, val_text, source);
  uoe::Vocab vocab;
  vocab.kind = kind;
  if (kind == uoe::TokenizerKind::sentencepiece) {
    vocab = sentencepiece_model(o, split.train, split.train_label, threads);
    if (vocab.sp->reserved_eod() < 0)
      uoe::fail("--eod needs the SentencePiece model's </s> piece as its end-of-document token, but --tokenizer-model '",
                o.tokenizer_model, "' has none (trained with eos_id=-1?): train a model here, or drop --eod");
  }
  const auto train_docs = documents(train_text, train_ends, o.eod, o.eod_separator);
  size_t n_train_docs = 0, n_val_docs = 0;
  const std::vector<uoe::TextSpan> train = document_spans(train_text, train_docs, 0, split.train.size(), n_train_docs);
  std::vector<uoe::TextSpan> val;
  if (val_text != nullptr) {
    val = document_spans(*val_text, documents(*val_text, val_ends, o.eod, o.eod_separator), 0, val_text->size(),
                         n_val_docs);
  } else {
    val = document_spans(train_text, train_docs, split.cut, train_text.size(), n_val_docs);
  }
  progress.start();
  uoe::Dataset ds = uoe::data_from_spans(train, val, vocab, source, [&progress](size_t b) { progress.add(b); });
  ds.train_bytes = static_cast<double>(split.train.size());  // blank lines between documents included
  ds.val_bytes = static_cast<double>(split.val.size());
  std::printf("  documents (--eod%s %s): %zu end in the training split, %zu in the validation split; "
              "end-of-document id %d\n", o.eod == "separator" ? "-separator" : "",
              o.eod == "separator" ? o.eod_separator.c_str() : o.eod.c_str(), n_train_docs, n_val_docs, ds.vocab.eod);
  for (const auto& [n, label] : {std::pair{ds.train.size(), &split.train_label}, std::pair{ds.val.size(), &split.val_label}})
    if (n < 2) uoe::fail(*label, " encodes to ", n, " tokens; a split needs at least 2 (one input and its target)");
  return ds;
}

int run(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const uoe::TokenizerKind kind = uoe::tokenizer_kind_parse(o.tokenizer, "--tokenizer");
  const int threads = o.threads > 0 ? o.threads : uoe::default_threads();
  uoe::threads_set(threads);
  const bool eod = o.eod != "none";
  std::vector<size_t> train_ends, val_ends;
  std::string train_text =
      o.data.empty() ? uoe::data_builtin_corpus() : read_inputs(o.data, "--data", &train_ends, o.eod != "file");
  if (o.data.empty()) train_ends.push_back(train_text.size());
  std::string val_text;
  if (!o.val_data.empty()) val_text = read_inputs(o.val_data, "--val-data", &val_ends, o.eod != "file");
  const std::string source = o.data.empty() ? "the built-in corpus" : inputs_label(o.data);
  Progress progress(static_cast<double>(train_text.size() + val_text.size()), o.progress || ::isatty(2) == 1);
  progress.start();
  // seq_len 1: any split of at least 2 tokens is kept; uoe-train checks its own --seq-len on load.
  uoe::Dataset ds = eod ? prepare_documents(o, kind, train_text, train_ends, o.val_data.empty() ? nullptr : &val_text,
                                             val_ends, source, threads, progress)
                    : kind == uoe::TokenizerKind::sentencepiece
                        ? prepare_sentencepiece(o, train_text, o.val_data.empty() ? nullptr : &val_text, source,
                                                threads, progress)
                        : uoe::data_from_text(train_text, o.val_data.empty() ? nullptr : &val_text, o.val_fraction,
                                              kind, /*seq_len=*/1, source, [&progress](size_t b) { progress.add(b); });
  const double tokenize_s = progress.finish();
  if (kind == uoe::TokenizerKind::word) uoe::word_vocab_limit(ds, o.vocab_size, o.min_count);
  const std::filesystem::path parent = std::filesystem::path(o.output).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) uoe::fail("--output: cannot create the directory '", parent.string(), "' (", ec.message(), ")");
  }
  const std::vector<std::string> written =
      uoe::token_files_write(ds, o.output, static_cast<uint64_t>(std::llround(o.shard_mb * 1e6)));
  // Indexes, vocabulary/model; then the shards and (--eod) documents files.
  const size_t shards = written.size() - (kind == uoe::TokenizerKind::byte ? 2 : 3);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const int V = ds.vocab.size();
  std::printf("uoe-prepare: %s, %s-level, V=%d, %s tokens\n", source.c_str(), o.tokenizer.c_str(), V,
              V <= 65536 ? "uint16" : "uint32");
  std::printf("  train: %zu tokens -> %s\n", ds.train.size(), written[0].c_str());
  std::printf("  val:   %zu tokens -> %s%s\n", ds.val.size(), written[1].c_str(),
              o.val_given.empty() ? " (the last --val-fraction of the text)" : "");
  for (size_t i = written.size() - shards; i < written.size(); ++i) {
    const bool docs = written[i].size() > 5 && written[i].compare(written[i].size() - 5, 5, ".docs") == 0;
    std::printf("  %s: %s (%s)\n", docs ? "documents" : "shard", written[i].c_str(), megabytes(written[i]).c_str());
  }
  if (kind == uoe::TokenizerKind::word) {
    size_t unknown = 0;
    for (int32_t id : ds.val.to_vector()) unknown += id == 0;
    std::printf("  vocab: %d words -> %s; %.2f%% of validation tokens are <unk> (not in the training split)\n", V,
                written[2].c_str(), ds.val.empty() ? 0.0 : 100.0 * static_cast<double>(unknown) / ds.val.size());
  }
  if (kind == uoe::TokenizerKind::sentencepiece)
    std::printf("  model: %d pieces -> %s\n", V, written[2].c_str());
  const double mb = static_cast<double>(train_text.size() + val_text.size()) / 1e6;
  std::printf("  tokenized %.1f MB in %.2fs (%.1f MB/s) on %d thread%s\n", mb, tokenize_s,
              tokenize_s > 0 ? mb / tokenize_s : 0.0, threads, threads == 1 ? "" : "s");
  std::printf("  done in %.1fs; train with: uoe-train --data %s --val-data %s%s%s\n", secs, written[0].c_str(),
              written[1].c_str(), kind == uoe::TokenizerKind::byte ? "" : " --tokenizer ",
              kind == uoe::TokenizerKind::byte ? "" : o.tokenizer.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  PrepareOptions o;
  return uoe::cli_main("uoe-prepare", [&] { return parse(argc, argv, o); }, [&] { return run(o); });
}
