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
// uoe-train's own (runtime/data.hpp, data_from_text: its tokenizers, vocabulary order and split by
// count, applied to the streamed text), so `uoe-train --data P.train.idx --val-data P.val.idx` trains on
// exactly the token streams that `uoe-train --data corpus.txt` (same --val-data / --val-fraction /
// --tokenizer) builds from the text, and logs the same losses; it just skips reading and tokenizing
// the text. --vocab-size / --min-count then keep the most frequent words (runtime/tokenizer.hpp,
// word_vocab_limit's rule, applied to the counts); without them the ids are uoe-train's.
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
// process may run on, runtime/cpu_affinity.hpp): each block of the text (Memory, below) is cut after
// "\n"s into one piece per thread (pieces of at most 4 MB; runtime/tokenizer.hpp, text_line_pieces),
// which no tokenizer merges across, so the files written are byte-identical for any thread count.
// Training a SentencePiece model is the library's own (its num_threads: the same --threads).
//
// Memory. The text is streamed, never held whole (runtime/text_stream.hpp): read in blocks of
// --threads x 4 MB that end at a line end, each block encoded and its ids handed to the shard
// writers (runtime/token_file.hpp, TokenShardWriter), which write each shard as the ids arrive. Word
// level reads the training text twice (the vocabulary's counts first; without --val-data and --eod
// the counts of the validation tokens are taken out again by re-reading the blocks from where the
// split by token count falls); sentencepiece trains its model on a sample of at most 64 MiB of the
// training split (runtime/tokenizer.hpp, sentencepiece_sample_lines), read from the files. Peak
// memory is then a few blocks plus the vocabulary and the SentencePiece trainer's sample, whatever
// the corpus size (tests/cli/prepare_stream.py checks 20 MB against 200 MB of text); the output is
// byte-identical to holding the text whole, for any block size. A line longer than a block is held
// whole for sentencepiece (runtime/text_stream.hpp, Blocks).
//
// Progress. While tokenizing, a line on stderr shows the MB done of the total (word level: both
// passes), MB/s and the time left, redrawn at most 4 times a second, when stderr is a terminal or
// with --progress; the summary on stdout always says how many MB were tokenized at what rate on how
// many threads.
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
#include <deque>
#include <functional>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "parallel/mpi_version.hpp"
#include "runtime/atomic_file.hpp"
#include "runtime/cli.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/text_stream.hpp"
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
                 "and PREFIX.train.docs records where documents start (uoe-train --windows-within-documents).\n"
                 "The text is streamed in blocks (memory does not grow with the corpus); a SentencePiece model is\n"
                 "trained on a sample of at most 64 MiB of the training split (the whole split when smaller).\n\n"
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

// Files written so far, removed again when a later step fails (nothing half-written is left).
struct Written {
  std::vector<std::string> paths;
  bool keep = false;
  ~Written() {
    if (keep) return;
    for (const std::string& p : paths) {
      std::error_code ec;
      std::filesystem::remove(p, ec);
    }
  }
};

// The split by text (sentencepiece, and every tokenizer with --eod; see the top of this file): the
// validation split from the first line start at or after the last --val-fraction of the bytes, or
// the --val-data text. Ranges of the --data text, and of the --val-data text when given.
struct TextSplit {
  size_t train_end = 0, val_begin = 0, val_end = 0;  // train: [0, train_end); val: [val_begin, val_end)
  std::string train_label, val_label;
};

TextSplit split_by_text(const PrepareOptions& o, const uoe::TextSource& train, const uoe::TextSource* val,
                        const std::string& source) {
  TextSplit s;
  s.train_label = source;
  s.val_label = inputs_label(o.val_data);
  const size_t n = train.size();
  if (val != nullptr) {
    s.train_end = n;
    s.val_end = val->size();
    return s;
  }
  size_t cut = n - static_cast<size_t>(std::llround(static_cast<double>(n) * o.val_fraction));
  const size_t nl = cut == 0 ? std::string::npos : train.find_newline(cut - 1, n);
  cut = nl == std::string::npos ? n : nl + 1;
  if (cut >= n)
    uoe::fail(source, " has no line start in its last --val-fraction ", o.val_fraction,
              " of bytes, so no validation split can be cut there: give --val-data, or a larger --val-fraction");
  s.train_end = s.val_begin = cut;
  s.val_end = n;
  s.train_label = "the training split of " + source;
  s.val_label = "the validation split of " + source + " (from byte " + std::to_string(cut) + ")";
  return s;
}

// The SentencePiece model: --tokenizer-model, or one trained on a sample of the training split
// (runtime/tokenizer.hpp, sentencepiece_sample_lines: at most 64 MiB, read from the files).
uoe::Vocab sentencepiece_model(const PrepareOptions& o, const uoe::TextSource& text, size_t train_end,
                               const std::string& train_label, int threads) {
  uoe::Vocab vocab;
  const auto t0 = std::chrono::steady_clock::now();
  if (!o.tokenizer_model.empty()) {
    vocab = uoe::sentencepiece_vocab_read(o.tokenizer_model, "--tokenizer-model");
  } else {
    uoe::SentencePieceTraining how;
    how.vocab_size = static_cast<int>(std::min<int64_t>(o.vocab_size, INT32_MAX));
    how.model_type = o.model_type;
    how.threads = threads;
    const size_t sample = train_end <= uoe::kSentencePieceSampleBytes ? train_end : uoe::kSentencePieceSampleBytes;
    std::printf("uoe-prepare: training a SentencePiece %s model of %d pieces on %.1f MB of %s\n", o.model_type.c_str(),
                how.vocab_size, static_cast<double>(sample) / 1e6, train_label.c_str());
    std::fflush(stdout);
    uoe::TextSample lines = uoe::sentencepiece_sample(
        train_end, [&text](size_t pos) { return text.rfind_newline(pos); },
        [&text, train_end](size_t pos) { return text.find_newline(pos, train_end); },
        [&text](size_t begin, size_t n, std::string& out) { text.read(begin, n, out); });
    vocab = uoe::sentencepiece_train_lines(std::move(lines.lines), how, train_label);
    std::printf("  model trained in %.1fs\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return vocab;
}

// Word level: the counts of the training split's words, read in a first pass (the vocabulary must
// be known before the first id is written). Keys view `arena`, which owns each word once.
struct WordCounts {
  std::unordered_map<std::string_view, int64_t> counts;
  std::deque<std::string> arena;
  struct Block {
    size_t begin, end;
    uint64_t tokens;
  };
  std::vector<Block> blocks;  // without a rule: each block's bytes and tokens (for the split by count)
  uint64_t tokens = 0;
  void add(std::string_view word, int64_t c) {
    const auto it = counts.find(word);
    if (it != counts.end()) {
      it->second += c;
      return;
    }
    arena.emplace_back(word);
    counts.emplace(arena.back(), c);
  }
};

void word_count(const uoe::TextSource& text, size_t begin, size_t end, const uoe::TextStreamOptions& so, int threads,
                WordCounts& wc, Progress& progress) {
  uoe::DocumentState state;
  size_t pos = begin;
  uoe::text_stream(text, begin, end, so, state, [&](const std::vector<uoe::TextPiece>& pieces) {
    const uoe::TextPieceGroups g = uoe::text_piece_groups(pieces, threads);
    std::vector<std::unordered_map<std::string_view, int64_t>> local(g.groups.size());
    std::vector<uint64_t> tokens(g.groups.size(), 0);
    uoe::parallel_ranges(static_cast<int64_t>(g.groups.size()), 1, [&](int64_t gb, int64_t ge) {
      for (int64_t k = gb; k < ge; ++k) {
        size_t bytes = 0;
        for (size_t p = g.groups[static_cast<size_t>(k)].first; p < g.groups[static_cast<size_t>(k)].second; ++p) {
          const std::vector<std::string_view> words = uoe::word_tokens(g.parts[p].text);
          for (std::string_view w : words) ++local[static_cast<size_t>(k)][w];
          tokens[static_cast<size_t>(k)] += words.size();
          bytes += g.parts[p].text.size();
        }
        progress.add(bytes);
      }
    });
    uint64_t n = 0, bytes = 0;
    for (size_t k = 0; k < local.size(); ++k) {
      for (const auto& [w, c] : local[k]) wc.add(w, c);
      n += tokens[k];
    }
    for (const uoe::TextPiece& p : pieces) bytes += p.text.size();
    wc.tokens += n;
    if (so.rule == uoe::DocumentRule::none) wc.blocks.push_back({pos, pos + bytes, n});
    pos += bytes;
  });
}

// The vocabulary of the counts ("<unk>", words by descending count: runtime/data.hpp), limited by
// --vocab-size / --min-count (runtime/tokenizer.hpp, word_vocab_limit's rule), "<eod>" last with --eod.
uoe::Vocab word_vocab(const PrepareOptions& o, WordCounts& wc, bool eod) {
  std::vector<std::pair<std::string_view, int64_t>> sorted(wc.counts.begin(), wc.counts.end());
  uoe::Vocab vocab = uoe::word_vocab_from_counts(sorted);
  const size_t V = vocab.words.size();
  size_t keep = 1;
  while (keep < V && sorted[keep - 1].second >= o.min_count) ++keep;
  if (o.vocab_size > 0) keep = std::min(keep, static_cast<size_t>(o.vocab_size) - (eod ? 1 : 0));
  vocab.words.resize(keep);
  if (eod) {
    vocab.eod = static_cast<int32_t>(vocab.words.size());
    vocab.words.emplace_back(uoe::kEodWord);
  }
  return vocab;
}

// Encodes [begin, end) of `text` block by block on the compute threads; each block's ids, in order,
// go to `sink` (a part at a time). The parts' buffers are kept from block to block: memory stays
// that of one block's ids.
using Encoder = std::function<void(std::string_view, std::vector<int32_t>&)>;
void encode_range(const uoe::TextSource& text, size_t begin, size_t end, const uoe::TextStreamOptions& so,
                  uoe::DocumentState& state, int threads, const Encoder& encode, int32_t eod, Progress& progress,
                  const std::function<void(const std::vector<int32_t>&)>& sink) {
  std::vector<std::vector<int32_t>> out;
  uoe::text_stream(text, begin, end, so, state, [&](const std::vector<uoe::TextPiece>& pieces) {
    const uoe::TextPieceGroups g = uoe::text_piece_groups(pieces, threads);
    if (out.size() < g.groups.size()) out.resize(g.groups.size());
    for (auto& v : out) v.clear();
    uoe::parallel_ranges(static_cast<int64_t>(g.groups.size()), 1, [&](int64_t gb, int64_t ge) {
      for (int64_t k = gb; k < ge; ++k) {
        size_t bytes = 0;
        for (size_t p = g.groups[static_cast<size_t>(k)].first; p < g.groups[static_cast<size_t>(k)].second; ++p) {
          encode(g.parts[p].text, out[static_cast<size_t>(k)]);
          if (g.parts[p].eod) out[static_cast<size_t>(k)].push_back(eod);
          bytes += g.parts[p].text.size();
        }
        progress.add(bytes);
      }
    });
    for (size_t k = 0; k < g.groups.size(); ++k) sink(out[k]);
  });
}

int run(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const uoe::TokenizerKind kind = uoe::tokenizer_kind_parse(o.tokenizer, "--tokenizer");
  const int threads = o.threads > 0 ? o.threads : uoe::default_threads();
  uoe::threads_set(threads);
  const bool eod = o.eod != "none";
  const std::unique_ptr<uoe::TextSource> train_text =
      o.data.empty() ? std::make_unique<uoe::TextSource>(uoe::data_builtin_corpus(), "the built-in corpus")
                     : std::make_unique<uoe::TextSource>(o.data, "--data", o.eod != "file");
  std::unique_ptr<uoe::TextSource> val_text;
  if (!o.val_data.empty()) val_text = std::make_unique<uoe::TextSource>(o.val_data, "--val-data", o.eod != "file");
  const std::string source = o.data.empty() ? "the built-in corpus" : inputs_label(o.data);
  const size_t total_bytes = train_text->size() + (val_text ? val_text->size() : 0);

  uoe::TextStreamOptions so;
  so.tokenizer = kind;
  so.rule = o.eod == "file"         ? uoe::DocumentRule::file
            : o.eod == "blank-line" ? uoe::DocumentRule::blank_line
            : o.eod == "separator"  ? uoe::DocumentRule::separator
                                    : uoe::DocumentRule::none;
  so.separator = o.eod_separator;
  so.block_bytes = uoe::text_block_bytes(threads);

  // The split: by text (sentencepiece, --eod), else as uoe-train splits (runtime/data.hpp): byte
  // level by bytes, word level by tokens (known after the counting pass).
  const bool by_text = eod || kind == uoe::TokenizerKind::sentencepiece;
  TextSplit split;
  if (by_text) {
    split = split_by_text(o, *train_text, val_text.get(), source);
  } else {
    split.train_label = split.val_label = source;
    split.train_end = train_text->size();
    split.val_end = val_text ? val_text->size() : 0;
    if (!val_text && kind == uoe::TokenizerKind::byte) {
      const size_t n = train_text->size();
      split.train_end = split.val_begin = n - static_cast<size_t>(std::llround(static_cast<double>(n) * o.val_fraction));
      split.val_end = n;
    }
  }
  const uoe::TextSource& val_source = val_text ? *val_text : *train_text;
  const bool word_by_count = kind == uoe::TokenizerKind::word && !by_text && !val_text;

  // The vocabulary.
  const int passes = kind == uoe::TokenizerKind::word ? 2 : 1;
  Progress progress(static_cast<double>(total_bytes) * passes, o.progress || ::isatty(2) == 1);
  progress.start();
  uoe::Vocab vocab;
  vocab.kind = kind;
  std::shared_ptr<const uoe::Tokenizer> tokenizer;
  uint64_t train_tokens_wanted = 0;  // word_by_count: the training split's token count
  double train_bytes = static_cast<double>(split.train_end), val_bytes = static_cast<double>(split.val_end - split.val_begin);
  WordCounts wc;
  if (kind == uoe::TokenizerKind::sentencepiece) {
    vocab = sentencepiece_model(o, *train_text, split.train_end, split.train_label, threads);
    if (eod && vocab.sp->reserved_eod() < 0)
      uoe::fail("--eod needs the SentencePiece model's </s> piece as its end-of-document token, but --tokenizer-model '",
                o.tokenizer_model, "' has none (trained with eos_id=-1?): train a model here, or drop --eod");
    if (eod) vocab.eod = vocab.sp->reserved_eod();
    tokenizer = vocab.sp;
    progress.start();
  } else if (kind == uoe::TokenizerKind::byte) {
    if (eod) vocab.eod = 256;
  } else {
    word_count(*train_text, 0, word_by_count ? train_text->size() : split.train_end, so, threads, wc, progress);
    if (word_by_count) {
      // The last round(n * f) tokens are validation: take their words out of the counts again
      // (re-reading the blocks from the one that holds the training split's last token).
      const uint64_t n = wc.tokens;
      const auto n_val = static_cast<uint64_t>(std::llround(static_cast<double>(n) * o.val_fraction));
      train_tokens_wanted = n - n_val;
      size_t cut = 0;  // where the training split's last token ends
      uint64_t before = 0;
      std::string buf;
      for (const WordCounts::Block& b : wc.blocks) {
        if (before + b.tokens >= train_tokens_wanted && b.tokens > 0) {
          train_text->read(b.begin, b.end - b.begin, buf);
          const std::vector<std::string_view> words = uoe::word_tokens(buf);
          for (size_t i = 0; i < words.size(); ++i) {
            const uint64_t t = before + i;
            if (t + 1 == train_tokens_wanted) cut = b.begin + static_cast<size_t>(words[i].data() + words[i].size() - buf.data());
            if (t >= train_tokens_wanted) {
              const auto it = wc.counts.find(words[i]);
              if (--it->second == 0) wc.counts.erase(it);
            }
          }
        }
        before += b.tokens;
      }
      train_bytes = static_cast<double>(cut);
      val_bytes = static_cast<double>(train_text->size() - cut);
    } else if (!by_text) {
      train_bytes = static_cast<double>(train_text->size());
    }
    vocab = word_vocab(o, wc, eod);
    wc = WordCounts();
  }
  if (!tokenizer) tokenizer = uoe::tokenizer_for(vocab);
  const int V = vocab.size();

  // Encoding and writing: the ids go to the shard writers as each block is encoded.
  const std::filesystem::path parent = std::filesystem::path(o.output).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) uoe::fail("--output: cannot create the directory '", parent.string(), "' (", ec.message(), ")");
  }
  const uint64_t shard_bytes = static_cast<uint64_t>(std::llround(o.shard_mb * 1e6));
  const uint64_t hash = uoe::vocab_hash(vocab);
  uoe::TokenShardWriter train_out(o.output + ".train", kind, static_cast<uint32_t>(V), hash, shard_bytes, vocab.eod);
  uoe::TokenShardWriter val_out(o.output + ".val", kind, static_cast<uint32_t>(V), hash, shard_bytes, vocab.eod);
  uint64_t unknown = 0;  // word level: <unk> ids in the validation split
  const auto to_val = [&](const int32_t* ids, size_t n) {
    if (kind == uoe::TokenizerKind::word) unknown += static_cast<uint64_t>(std::count(ids, ids + n, 0));
    val_out.append(ids, n);
  };
  Encoder encode;
  std::unordered_map<std::string_view, int32_t> word_ids;
  if (kind == uoe::TokenizerKind::byte) {
    encode = [](std::string_view t, std::vector<int32_t>& out) {
      for (char c : t) out.push_back(static_cast<unsigned char>(c));
    };
  } else if (kind == uoe::TokenizerKind::word) {
    word_ids.reserve(vocab.words.size());
    for (size_t i = 1; i < vocab.words.size(); ++i)
      if (static_cast<int32_t>(i) != vocab.eod) word_ids.emplace(vocab.words[i], static_cast<int32_t>(i));
    encode = [&word_ids](std::string_view t, std::vector<int32_t>& out) {
      for (std::string_view w : uoe::word_tokens(t)) {
        const auto it = word_ids.find(w);
        out.push_back(it == word_ids.end() ? 0 : it->second);
      }
    };
  } else {
    encode = [&tokenizer](std::string_view t, std::vector<int32_t>& out) { tokenizer->encode_lines(t, true, out); };
  }
  const auto t_encode = std::chrono::steady_clock::now();
  uoe::DocumentState state;
  if (word_by_count) {
    encode_range(*train_text, 0, train_text->size(), so, state, threads, encode, vocab.eod, progress,
                 [&](const std::vector<int32_t>& ids) {
                   const size_t to_train = static_cast<size_t>(
                       std::min<uint64_t>(ids.size(), train_tokens_wanted - train_out.tokens()));
                   train_out.append(ids.data(), to_train);
                   to_val(ids.data() + to_train, ids.size() - to_train);
                 });
  } else {
    encode_range(*train_text, 0, split.train_end, so, state, threads, encode, vocab.eod, progress,
                 [&](const std::vector<int32_t>& ids) { train_out.append(ids.data(), ids.size()); });
    const uint64_t train_docs = state.ended;
    if (val_text) state = uoe::DocumentState();
    state.ended = 0;
    encode_range(val_source, split.val_begin, split.val_end, so, state, threads, encode, vocab.eod, progress,
                 [&](const std::vector<int32_t>& ids) { to_val(ids.data(), ids.size()); });
    if (eod)
      std::printf("  documents (--eod%s %s): %llu end in the training split, %llu in the validation split; "
                  "end-of-document id %d\n", o.eod == "separator" ? "-separator" : "",
                  o.eod == "separator" ? o.eod_separator.c_str() : o.eod.c_str(),
                  static_cast<unsigned long long>(train_docs), static_cast<unsigned long long>(state.ended), vocab.eod);
  }
  const double tokenize_s = progress.finish();
  const uint64_t n_train = train_out.tokens(), n_val = val_out.tokens();
  if (kind == uoe::TokenizerKind::sentencepiece && !eod) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_encode).count();
    const double mb = static_cast<double>(total_bytes) / 1e6;
    std::printf("  encoded %.1f MB in %.2fs (%.1f MB/s); %.3f bytes per token in validation (val_bpb = val_loss x "
                "%.5f / ln 2)\n", mb, secs, secs > 0 ? mb / secs : 0.0,
                n_val == 0 ? 0.0 : val_bytes / static_cast<double>(n_val),
                val_bytes == 0 ? 0.0 : static_cast<double>(n_val) / val_bytes);
  }
  if (by_text) {
    for (const auto& [n, label] : {std::pair{n_train, &split.train_label}, std::pair{n_val, &split.val_label}})
      if (n < 2) uoe::fail(*label, " encodes to ", n, " tokens; a split needs at least 2 (one input and its target)");
  } else {
    std::ostringstream frac;
    frac << o.val_fraction;
    const std::string train_what = val_text ? "training data " + source
                                            : "training split of " + source + " (all but the last --val-fraction " +
                                                  frac.str() + ")";
    const std::string val_what = val_text ? "validation data " + source
                                          : "validation split of " + source + " (the last --val-fraction " + frac.str() + ")";
    for (const auto& [n, what] : {std::pair{n_train, &train_what}, std::pair{n_val, &val_what}})
      if (n < 2) uoe::fail(*what, " has ", n, " tokens; --seq-len 1 needs at least 2 (one window of inputs plus the next token)");
  }

  // The indexes (last: a split is a dataset once its index is in place), then the vocabulary or model.
  Written done;
  std::vector<std::string> train_files = train_out.finish(train_bytes);
  done.paths = train_files;
  std::vector<std::string> val_files = val_out.finish(val_bytes);
  done.paths.insert(done.paths.end(), val_files.begin(), val_files.end());
  std::vector<std::string> written = {train_files[0], val_files[0]};
  if (kind == uoe::TokenizerKind::word) {
    uoe::vocab_file_write(o.output + ".vocab", vocab);
    written.push_back(o.output + ".vocab");
  } else if (kind == uoe::TokenizerKind::sentencepiece) {
    uoe::atomic_write_file(o.output + ".model", vocab.model);
    written.push_back(o.output + ".model");
  }
  done.keep = true;
  written.insert(written.end(), train_files.begin() + 1, train_files.end());
  written.insert(written.end(), val_files.begin() + 1, val_files.end());
  const size_t shards = written.size() - (kind == uoe::TokenizerKind::byte ? 2 : 3);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("uoe-prepare: %s, %s-level, V=%d, %s tokens\n", source.c_str(), o.tokenizer.c_str(), V,
              V <= 65536 ? "uint16" : "uint32");
  std::printf("  train: %llu tokens -> %s\n", static_cast<unsigned long long>(n_train), written[0].c_str());
  std::printf("  val:   %llu tokens -> %s%s\n", static_cast<unsigned long long>(n_val), written[1].c_str(),
              o.val_given.empty() ? " (the last --val-fraction of the text)" : "");
  for (size_t i = written.size() - shards; i < written.size(); ++i) {
    const bool docs = written[i].size() > 5 && written[i].compare(written[i].size() - 5, 5, ".docs") == 0;
    std::printf("  %s: %s (%s)\n", docs ? "documents" : "shard", written[i].c_str(), megabytes(written[i]).c_str());
  }
  if (kind == uoe::TokenizerKind::word)
    std::printf("  vocab: %d words -> %s; %.2f%% of validation tokens are <unk> (not in the training split)\n", V,
                written[2].c_str(), n_val == 0 ? 0.0 : 100.0 * static_cast<double>(unknown) / static_cast<double>(n_val));
  if (kind == uoe::TokenizerKind::sentencepiece)
    std::printf("  model: %d pieces -> %s\n", V, written[2].c_str());
  const double mb = static_cast<double>(total_bytes) / 1e6;
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
