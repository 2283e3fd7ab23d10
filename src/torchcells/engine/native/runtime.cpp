// torchcells native runtime: runs a traced step program T times without Python.
//
// A program is a list of instructions over a table of tensor slots, planned in
// Python from the derived forward/backward graphs (engine/native/plan.py, in the
// records of engine/native/records.py, whose IntEnums mirror the enums below):
//   * CALL   -- any aten operator, called through the dispatcher (boxed); where torch has no
//               float32 batch-reduce GEMM, per-step products on large float32 weights call
//               mkl::_mkl_linear on weights packed once;
//   * PRODUCT -- a per-step float32 product A @ W on W laid out once per sequence in column
//               blocks: one call of torch's batch-reduce GEMM (at::native::cpublas::brgemm)
//               a block, the blocks shared out over threads;
//   * FUSED  -- a group of elementwise operations over one 2-D domain [R, C],
//               evaluated tile by tile in vector registers (at::vec), reading its
//               inputs from strided views and writing only the values used
//               outside the group, each into a fresh tensor or a preset place.
// The two drivers run the forward over all steps (saving what the backward reads
// into [T, ...] buffers) and the backward in reverse (the weight gradients of the
// per-step products summed by one product over all steps after the loop); each takes
// the program and one struct (ForwardRun, BackwardRun) with named fields; a step's inputs and
// places are views moved along from step to step (StepView), not new views each step.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/native/CPUBlas.h>

#include <cmath>
#include <type_traits>
#include <string>
#include <deque>
#include <vector>

namespace {

// The numbers Python writes into a plan, each enum listed once (an X-macro): the C++ enum and the
// table enums() exports come from the same list, and the loader (build.py) compares that table
// with the IntEnums of records.py before it uses this build.
#define TC_OP(X)                                                                            \
  X(ADD) X(SUB) X(MUL) X(DIV) X(NEG) X(SIGMOID) X(TANH) X(EXP) X(LOG) X(RELU) X(SIGMOID_BWD) \
  X(TANH_BWD) X(WHERE) X(THRESHOLD_BWD) X(MAX) X(MIN) X(SQRT) X(RSQRT) X(RECIP) X(ABS) X(COPY) \
  X(SQUARE) X(FILL)
#define TC_LAYOUT(X) X(FULL) X(ROW) X(COL) X(SCALAR)
#define TC_ARG_KIND(X) \
  X(TENSOR) X(INT) X(DOUBLE) X(BOOL) X(NONE) X(INTLIST) X(TENSORLIST) X(SCALAR_INT) X(SCALAR_DOUBLE) X(BOOLLIST)
#define TC_SAVED_KIND(X) X(PER_STEP) X(ONCE) X(STATE_BEFORE) X(STATE_AFTER)
#define TC_OPERAND_SOURCE(X) X(OWN_BUFFER) X(HOISTED_GRAD) X(SAVED) X(STATE_BEFORE) X(STATE_AFTER)
#define TC_SCAN_GATES(X) X(MIN_GRU) X(MIN_LSTM)

// Elementwise opcodes of the register machine.
#define X(name) O_##name,
enum Op : int64_t { TC_OP(X) };
#undef X
// How an input of a fused group is laid over the [R, C] domain.
#define X(name) L_##name,
enum Layout : int64_t { TC_LAYOUT(X) };
#undef X
// What an argument of a call is.
#define X(name) A_##name,
enum ArgKind : int64_t { TC_ARG_KIND(X) };
#undef X
// Where a value the backward reads is kept over the sequence (with the state leaf it is, for STATE_*).
#define X(name) SK_##name,
enum SavedKind : int64_t { TC_SAVED_KIND(X) };
#undef X
// Where an operand of a deferred weight-gradient product lies for all steps.
#define X(name) OS_##name,
enum OperandSource : int64_t { TC_OPERAND_SOURCE(X) };
#undef X
// The gatings of the scan's fused pass (engine/gated_scan.py).
#define X(name) SG_##name,
enum ScanGates : int64_t { TC_SCAN_GATES(X) };
#undef X

pybind11::dict exported_enums() {
  pybind11::dict all;
#define TC_EXPORT(TABLE, title) \
  {                               \
    pybind11::dict d;             \
    TABLE(X)                      \
    all[title] = d;               \
  }
#define X(name) d[#name] = static_cast<int64_t>(O_##name);
  TC_EXPORT(TC_OP, "Op")
#undef X
#define X(name) d[#name] = static_cast<int64_t>(L_##name);
  TC_EXPORT(TC_LAYOUT, "Layout")
#undef X
#define X(name) d[#name] = static_cast<int64_t>(A_##name);
  TC_EXPORT(TC_ARG_KIND, "ArgKind")
#undef X
#define X(name) d[#name] = static_cast<int64_t>(SK_##name);
  TC_EXPORT(TC_SAVED_KIND, "SavedKind")
#undef X
#define X(name) d[#name] = static_cast<int64_t>(OS_##name);
  TC_EXPORT(TC_OPERAND_SOURCE, "OperandSource")
#undef X
#define X(name) d[#name] = static_cast<int64_t>(SG_##name);
  TC_EXPORT(TC_SCAN_GATES, "ScanGates")
#undef X
#undef TC_EXPORT
  return all;
}

struct Arg {
  int64_t kind;
  int64_t i = 0;
  double d = 0;
  std::vector<int64_t> list;
};

struct Call {
  c10::OperatorHandle op;
  std::vector<Arg> args;
  std::vector<int64_t> outs;   // one slot per returned tensor (a list return fills several)
  bool once = false;           // reads only per-sequence values: run at the first step, then reused
};

// What the run-once calls of a program made, kept by a driver for the length of one sequence.
struct OnceCache {
  bool filled = false;
  std::vector<at::Tensor> values;   // by slot
};

struct Input {
  int64_t slot, lay, offset;
  bool is_bool;
};

struct Instr {
  int64_t op, dst, a, b, c;
  double imm;
};

struct Output {
  int64_t reg, slot, into_slot, into_offset;   // into_slot >= 0: write into a column block of that slot
};

struct Fused {
  int64_t rows, cols;
  std::vector<Input> inputs;     // register i holds input i
  std::vector<Instr> code;
  std::vector<Output> outputs;
  std::vector<std::pair<int64_t, std::vector<int64_t>>> allocs;  // (slot, shape) made before the group
  int64_t n_regs;
};

// out = A @ W, W laid out as [ceil(cols / block_cols), K, block_cols] (records.ProductBlock).
struct Product {
  int64_t a, blocks, out, cols, block_cols;
};

enum class StepKind { call, fused, product };

struct Step {
  StepKind kind;
  size_t index;
};

// Multiply-adds a task of a product gets at least when its blocks are shared out over threads
// (smaller products run on one: a parallel region costs more than it saves).
constexpr int64_t kProductGrainMacs = int64_t(1) << 17;

#ifdef CPUBLAS_BRGEMM_F32F32F32
constexpr bool kBlockedProducts = true;
#else
constexpr bool kBlockedProducts = false;
#endif

constexpr int64_t TILE = 128;
// Elements per task when a fused group is split over threads (smaller groups run on one).
constexpr int64_t kGrainElements = 4096;

template <typename scalar_t>
struct Machine {
  using Vec = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t W = Vec::size();

  // exp for the activations: float uses the vector library's faster variant (within 2 units
  // in the last place instead of 1), double the accurate one.
  static inline Vec fexp(const Vec& x) {
    if constexpr (std::is_same_v<scalar_t, float>) return Vec::blendv(x.exp_u20(), x, x != x);  // NaN stays NaN
    else return x.exp();
  }

  static inline Vec sigmoid(const Vec& x) {
    const Vec one(scalar_t(1));
    return one / (one + fexp(x.neg()));
  }

  // tanh from one exp: (1 - e^{-2|x|}) / (1 + e^{-2|x|}) with x's sign; about 3x faster than
  // the vector library's tanh, absolute error within a few units of the last place of 1.
  static inline Vec tanh(const Vec& x) {
    const Vec one(scalar_t(1));
    const Vec t = fexp(x.abs() * Vec(scalar_t(-2)));
    const Vec y = (one - t) / (one + t);
    return Vec::blendv(y, y.neg(), x < Vec(scalar_t(0)));
  }

  static void run(const Fused& f, const std::vector<const void*>& in_ptr, const std::vector<int64_t>& in_rs,
                  const std::vector<scalar_t*>& out_ptr, const std::vector<int64_t>& out_rs) {
    const int64_t C = f.cols;
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, C));
    at::parallel_for(0, f.rows, grain, [&](int64_t r0, int64_t r1) {
      // the registers: one buffer per thread, kept between groups and steps (no allocation and
      // no zeroing per group): every element a result is stored from is written before it is
      // read; lanes past a tile's end hold what an earlier tile left, are computed and dropped
      thread_local std::vector<scalar_t> regs_store;
      const size_t need = static_cast<size_t>(f.n_regs * TILE) + 64;
      if (regs_store.size() < need) regs_store.resize(need);
      scalar_t* base = regs_store.data();
      auto reg = [&](int64_t k) { return base + k * TILE; };
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c0 = 0; c0 < C; c0 += TILE) {
          const int64_t n = std::min<int64_t>(TILE, C - c0);
          for (size_t k = 0; k < f.inputs.size(); ++k) {
            const Input& in = f.inputs[k];
            scalar_t* dst = reg(static_cast<int64_t>(k));
            if (in.is_bool) {
              const bool* p = static_cast<const bool*>(in_ptr[k]);
              if (in.lay == L_COL || in.lay == L_SCALAR) {
                const bool v = in.lay == L_COL ? p[r * in_rs[k]] : p[0];
                std::fill(dst, dst + n, v ? scalar_t(1) : scalar_t(0));
              } else {
                const bool* q = p + (in.lay == L_FULL ? r * in_rs[k] : 0) + c0;
                for (int64_t j = 0; j < n; ++j) dst[j] = q[j] ? scalar_t(1) : scalar_t(0);
              }
              continue;
            }
            const scalar_t* p = static_cast<const scalar_t*>(in_ptr[k]);
            if (in.lay == L_COL || in.lay == L_SCALAR) {
              const scalar_t v = in.lay == L_COL ? p[r * in_rs[k]] : p[0];
              std::fill(dst, dst + n, v);
            } else {
              const scalar_t* q = p + (in.lay == L_FULL ? r * in_rs[k] : 0) + c0;
              std::copy(q, q + n, dst);
            }
          }
          for (const Instr& ins : f.code) {
            scalar_t* d = reg(ins.dst);
            const scalar_t* a = reg(ins.a);
            const scalar_t* b = ins.b >= 0 ? reg(ins.b) : a;
            const scalar_t* cc = ins.c >= 0 ? reg(ins.c) : a;
            const Vec imm(static_cast<scalar_t>(ins.imm));
            const Vec one(scalar_t(1)), zero(scalar_t(0));
#define TC_LOOP(EXPR)                                              \
  for (int64_t j = 0; j < n; j += W) {                             \
    const Vec x = Vec::loadu(a + j);                               \
    (void)x;                                                       \
    Vec y = (EXPR);                                                \
    y.store(d + j);                                                \
  }                                                                \
  break;
#define TB (Vec::loadu(b + j))
#define TCC (Vec::loadu(cc + j))
            switch (ins.op) {
              case O_ADD: TC_LOOP(x + TB)
              case O_SUB: TC_LOOP(x - TB)
              case O_MUL: TC_LOOP(x * TB)
              case O_DIV: TC_LOOP(x / TB)
              case O_NEG: TC_LOOP(x.neg())
              case O_SIGMOID: TC_LOOP(sigmoid(x))
              case O_TANH: TC_LOOP(tanh(x))
              case O_EXP: TC_LOOP(x.exp())
              case O_LOG: TC_LOOP(x.log())
              case O_RELU: TC_LOOP(at::vec::maximum(x, zero))
              case O_SIGMOID_BWD: TC_LOOP(x * TB * (one - TB))
              case O_TANH_BWD: TC_LOOP(x * (one - TB * TB))
              case O_WHERE: TC_LOOP(Vec::blendv(TCC, TB, x != zero))
              case O_THRESHOLD_BWD: TC_LOOP(Vec::blendv(zero, x, TB > imm))
              case O_MAX: TC_LOOP(at::vec::maximum(x, TB))
              case O_MIN: TC_LOOP(at::vec::minimum(x, TB))
              case O_SQRT: TC_LOOP(x.sqrt())
              case O_RSQRT: TC_LOOP(x.rsqrt())
              case O_RECIP: TC_LOOP(x.reciprocal())
              case O_ABS: TC_LOOP(x.abs())
              case O_SQUARE: TC_LOOP(x * x)
              case O_FILL: TC_LOOP(imm)
              default: TC_LOOP(x)
            }
#undef TC_LOOP
#undef TB
#undef TCC
          }
          for (size_t k = 0; k < f.outputs.size(); ++k) {
            const scalar_t* s = reg(f.outputs[k].reg);
            std::copy(s, s + n, out_ptr[k] + r * out_rs[k] + c0);
          }
        }
      }
    });
  }
};

class Program {
 public:
  Program(int64_t n_slots, std::vector<int64_t> output_slots)
      : n_slots_(n_slots), output_slots_(std::move(output_slots)) {}

  void add_call(const std::string& name, const std::string& overload, const std::vector<int64_t>& kinds,
                const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                const std::vector<std::vector<int64_t>>& lists, const std::vector<int64_t>& outs, bool once) {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    Call call{op, {}, outs, once};
    for (size_t k = 0; k < kinds.size(); ++k) {
      Arg a{kinds[k]};
      a.i = ints[k];
      a.d = doubles[k];
      a.list = lists[k];
      call.args.push_back(std::move(a));
    }
    steps_.push_back({StepKind::call, calls_.size()});
    calls_.push_back(std::move(call));
  }

  void add_fused(int64_t rows, int64_t cols, const std::vector<std::vector<int64_t>>& inputs,
                 const std::vector<std::vector<int64_t>>& code, const std::vector<double>& imms,
                 const std::vector<std::vector<int64_t>>& outputs,
                 const std::vector<std::vector<int64_t>>& allocs, int64_t n_regs) {
    Fused f{rows, cols, {}, {}, {}, {}, n_regs};
    for (const auto& v : inputs) f.inputs.push_back({v[0], v[1], v[2], v[3] != 0});
    for (size_t k = 0; k < code.size(); ++k) {
      const auto& v = code[k];
      f.code.push_back({v[0], v[1], v[2], v[3], v[4], imms[k]});
    }
    for (const auto& v : outputs) f.outputs.push_back({v[0], v[1], v[2], v[3]});
    for (const auto& v : allocs) f.allocs.emplace_back(v[0], std::vector<int64_t>(v.begin() + 1, v.end()));
    steps_.push_back({StepKind::fused, fused_.size()});
    fused_.push_back(std::move(f));
  }

  void add_product(int64_t a, int64_t blocks, int64_t out, int64_t cols, int64_t block_cols) {
    TORCH_CHECK(kBlockedProducts, "torchcells native: this build has no batch-reduce GEMM for blocked products");
    TORCH_CHECK(cols > 0 && block_cols > 0, "torchcells native: a product needs cols > 0 and block_cols > 0");
    steps_.push_back({StepKind::product, products_.size()});
    products_.push_back({a, blocks, out, cols, block_cols});
  }

  // Runs the program on `inputs` (slots 0..n-1); `dest[k]`, when defined, is where output k goes.
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& dest) {
    return run_with(inputs, dest, nullptr);
  }

  // The same; with `once`, the run-once calls run on the first use of the cache and are reused after.
  std::vector<at::Tensor> run_with(const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& dest,
                                   OnceCache* once) {
    std::vector<at::Tensor> slots(static_cast<size_t>(n_slots_));
    for (size_t k = 0; k < inputs.size(); ++k) slots[k] = inputs[k];
    std::vector<at::Tensor> preset(static_cast<size_t>(n_slots_));
    for (size_t k = 0; k < dest.size() && k < output_slots_.size(); ++k) {
      if (dest[k].defined() && output_slots_[k] >= static_cast<int64_t>(inputs.size())) {
        preset[output_slots_[k]] = dest[k];
      }
    }
    const bool reuse = once != nullptr && once->filled;
    for (const Step& s : steps_) {
      if (s.kind == StepKind::fused) {
        run_fused(fused_[s.index], slots, preset);
        continue;
      }
      if (s.kind == StepKind::product) {
        run_product(products_[s.index], slots, preset);
        continue;
      }
      const Call& call = calls_[s.index];
      if (reuse && call.once) {
        for (int64_t o : call.outs) if (o >= 0) slots[o] = once->values[o];
        continue;
      }
      run_call(call, slots, preset);
    }
    if (once != nullptr && !once->filled) {
      // what a run-once call made, kept for the later steps: never the driver's place for it (a
      // view the driver moves along; the value would be neither kept nor copied to later places)
      once->values.assign(static_cast<size_t>(n_slots_), at::Tensor());
      for (const Call& call : calls_) {
        if (!call.once) continue;
        for (int64_t o : call.outs) {
          if (o < 0) continue;
          const bool placed = preset[o].defined() && slots[o].is_same(preset[o]);
          once->values[o] = placed ? slots[o].clone() : slots[o];
        }
      }
      once->filled = true;
    }
    std::vector<at::Tensor> out;
    out.reserve(output_slots_.size());
    for (size_t k = 0; k < output_slots_.size(); ++k) {
      const int64_t s = output_slots_[k];
      at::Tensor v = s >= 0 ? slots[s] : at::Tensor();
      if (k < dest.size() && dest[k].defined() && v.defined() && !v.is_same(dest[k])) {
        dest[k].copy_(v);
        v = dest[k];
      }
      out.push_back(v);
    }
    return out;
  }

 private:
  static void run_call(const Call& call, std::vector<at::Tensor>& slots, const std::vector<at::Tensor>& preset) {
    torch::jit::Stack stack;
    stack.reserve(call.args.size());
    for (const Arg& a : call.args) {
      switch (a.kind) {
        case A_TENSOR: stack.emplace_back(slots[a.i]); break;
        case A_INT: stack.emplace_back(a.i); break;
        case A_DOUBLE: stack.emplace_back(a.d); break;
        case A_BOOL: stack.emplace_back(a.i != 0); break;
        case A_NONE: stack.emplace_back(); break;
        case A_INTLIST: stack.emplace_back(c10::IntArrayRef(a.list)); break;
        case A_TENSORLIST: {
          std::vector<at::Tensor> ts;
          for (int64_t s : a.list) ts.push_back(slots[s]);
          stack.emplace_back(at::TensorList(ts));
          break;
        }
        case A_SCALAR_INT: stack.emplace_back(c10::Scalar(a.i)); break;
        case A_BOOLLIST: {
          c10::List<bool> flags;
          for (int64_t v : a.list) flags.push_back(v != 0);
          stack.emplace_back(flags);
          break;
        }
        default: stack.emplace_back(c10::Scalar(a.d)); break;
      }
    }
    call.op.callBoxed(&stack);
    std::vector<at::Tensor> results;
    for (auto& v : stack) {
      if (v.isTensor()) results.push_back(v.toTensor());
      else if (v.isTensorList()) for (const at::Tensor& t : v.toTensorVector()) results.push_back(t);
    }
    TORCH_CHECK(results.size() == call.outs.size(), "torchcells native: ", call.op.schema().name(),
                " returned ", results.size(), " tensors, expected ", call.outs.size());
    for (size_t k = 0; k < results.size(); ++k) {
      if (call.outs[k] >= 0) place(slots, preset, call.outs[k], results[k]);
    }
  }

  // `value` into slot `s`: into its preset place (copied there unless it already is that place)
  // where the driver gave one, else as it is.
  static void place(std::vector<at::Tensor>& slots, const std::vector<at::Tensor>& preset, int64_t s,
                    const at::Tensor& value) {
    if (preset[s].defined() && !preset[s].is_same(value)) {
      preset[s].copy_(value);
      slots[s] = preset[s];
    } else {
      slots[s] = value;
    }
  }

  static void run_product(const Product& p, std::vector<at::Tensor>& slots, const std::vector<at::Tensor>& preset) {
    at::Tensor a = slots[p.a];
    const at::Tensor& w = slots[p.blocks];
    const int64_t N = p.cols, nb = p.block_cols;
    TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kFloat, "torchcells native: a blocked product takes a 2-D "
                "float32 left operand, got ", a.dim(), "-D ", a.scalar_type());
    const int64_t M = a.size(0), K = a.size(1), n_blocks = (N + nb - 1) / nb;
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 3 && w.is_contiguous() && w.size(0) == n_blocks &&
                    w.size(1) == K && w.size(2) == nb,
                "torchcells native: a blocked product's weight should be [", n_blocks, ", ", K, ", ", nb,
                "] float32 and contiguous, got ", w.sizes(), " ", w.scalar_type());
    if (a.stride(1) != 1 || a.stride(0) < K) a = a.contiguous();
    const at::Tensor& dest = preset[p.out];
    // into the preset place when it is laid out as the product is and shares no memory with A
    // (the GEMM reads A while it writes; the drivers never pass such places, a direct run might)
    const bool in_place = dest.defined() && dest.is_contiguous() && dest.scalar_type() == at::kFloat &&
                          dest.dim() == 2 && dest.size(0) == M && dest.size(1) == N &&
                          at::get_overlap_status(a, dest) == at::MemOverlapStatus::No;
    at::Tensor c = in_place ? dest : at::empty({M, N}, a.options());
    if (M > 0 && K == 0) c.zero_();
#ifdef CPUBLAS_BRGEMM_F32F32F32
    if (M > 0 && K > 0) {
      const float* pa = a.data_ptr<float>();
      const float* pw = w.data_ptr<float>();
      float* pc = c.data_ptr<float>();
      const int64_t lda = a.stride(0);
      const int64_t grain = std::max<int64_t>(1, kProductGrainMacs / std::max<int64_t>(1, M * K * nb));
      at::parallel_for(0, n_blocks, grain, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t n = std::min(nb, N - j * nb);
          at::native::cpublas::brgemm(M, n, K, lda, nb, N, false, pa, pw + j * K * nb, pc + j * nb, false);
        }
        at::native::cpublas::brgemm_release(false);
      });
    }
#endif
    place(slots, preset, p.out, c);
  }

  static void run_fused(const Fused& f, std::vector<at::Tensor>& slots, const std::vector<at::Tensor>& preset) {
    const size_t n_in = f.inputs.size();
    at::ScalarType dtype = at::ScalarType::Undefined;
    for (size_t k = 0; k < n_in; ++k) {
      if (!f.inputs[k].is_bool) dtype = slots[f.inputs[k].slot].scalar_type();
    }
    TORCH_CHECK(dtype != at::ScalarType::Undefined, "torchcells native: a fused group reads no floating input");
    const auto options = slots[f.inputs[0].slot].options().dtype(dtype);
    for (const auto& al : f.allocs) {
      slots[al.first] = preset[al.first].defined() ? preset[al.first] : at::empty(al.second, options);
    }
    std::vector<const void*> in_ptr(n_in);
    std::vector<int64_t> in_rs(n_in);
    std::vector<at::Tensor> keep;
    for (size_t k = 0; k < n_in; ++k) {
      const Input& in = f.inputs[k];
      at::Tensor t = slots[in.slot];
      if (t.dim() >= 2 && t.stride(-1) != 1 && in.lay != L_COL && in.lay != L_SCALAR) {
        t = t.contiguous();
        keep.push_back(t);
      }
      const int64_t item = static_cast<int64_t>(t.element_size());
      in_ptr[k] = static_cast<const char*>(t.data_ptr()) + in.offset * item;
      if (in.lay == L_FULL) in_rs[k] = t.dim() >= 2 ? t.stride(0) : 0;
      else if (in.lay == L_COL) in_rs[k] = t.dim() >= 2 ? t.stride(0) : t.stride(-1);
      else in_rs[k] = 0;
    }
    const size_t n_out = f.outputs.size();
    std::vector<at::Tensor> outs(n_out);
    std::vector<int64_t> out_rs(n_out);
    for (size_t k = 0; k < n_out; ++k) {
      const Output& o = f.outputs[k];
      if (o.into_slot >= 0) {
        outs[k] = slots[o.into_slot].narrow(-1, o.into_offset, f.cols);
      } else {
        const int64_t s = o.slot;
        if (preset[s].defined() && preset[s].is_contiguous()) outs[k] = preset[s];
        else outs[k] = at::empty({f.rows, f.cols}, options);
      }
      out_rs[k] = outs[k].stride(0);
    }
    AT_DISPATCH_FLOATING_TYPES(dtype, "torchcells_fused", [&] {
      std::vector<scalar_t*> out_ptr(n_out);
      for (size_t k = 0; k < n_out; ++k) out_ptr[k] = outs[k].data_ptr<scalar_t>();
      Machine<scalar_t>::run(f, in_ptr, in_rs, out_ptr, out_rs);
    });
    for (size_t k = 0; k < n_out; ++k) {
      const Output& o = f.outputs[k];
      if (o.slot < 0) continue;
      if (o.into_slot >= 0) slots[o.slot] = outs[k];
      else place(slots, preset, o.slot, outs[k]);
    }
  }

  int64_t n_slots_;
  std::vector<int64_t> output_slots_;
  std::vector<Step> steps_;
  std::vector<Call> calls_;
  std::vector<Fused> fused_;
  std::vector<Product> products_;
};

// What forward_sequence reads: one struct with named fields, filled by sequence.py.
struct ForwardRun {
  std::vector<at::Tensor> hoisted;        // [T, ...] per hoisted input
  std::vector<at::Tensor> state;          // the initial state leaves
  std::vector<at::Tensor> consts;         // per-sequence values
  c10::optional<at::Tensor> valid;        // [T, B] bool, or None for full lengths
  std::vector<at::Tensor> extras;         // inputs after all others (packed weights, see plan.py)
  int64_t steps = 0;                      // T
  int64_t n_outputs = 0;                  // program outputs before the saved values: y, *new state
  int64_t y_alias = -1;                   // the state leaf y is (its history is then the output), or -1
  std::vector<int64_t> saved_kind;        // SavedKind per saved value (empty: save nothing)
  std::vector<int64_t> saved_index;       // its state leaf, for SK_STATE_BEFORE / SK_STATE_AFTER
};

// What backward_sequence reads.
struct BackwardRun {
  std::vector<c10::optional<at::Tensor>> saved;  // as forward_sequence returned them (None for state kinds)
  std::vector<int64_t> saved_kind, saved_index;  // as in ForwardRun
  std::vector<at::Tensor> history;               // [T+1, ...] per state leaf, from forward_sequence
  c10::optional<at::Tensor> d_ys;                // [T, ...], or None
  std::vector<c10::optional<at::Tensor>> d_final;  // per leaf, or None
  std::vector<c10::optional<at::Tensor>> d_hist;   // per leaf [T, ...] (or None; empty without every-step states)
  std::vector<at::Tensor> d_hoisted;             // a [T, ...] buffer per hoisted input, filled step by step
  std::vector<at::Tensor> zero_like;             // per tangent: its value when the tangent is missing
  int64_t n_consts = 0;
  int64_t n_grads = 0;                           // program outputs before the deferred operand pairs
  std::vector<bool> transposed;                  // per deferred pair: its left operand comes transposed
  std::vector<int64_t> operand_source;           // per deferred pair p: [2p] its left operand, [2p+1] its
  std::vector<int64_t> operand_index;            //   right: OperandSource and index
  int64_t steps = 0;                             // T
  int64_t chunk_rows = 1024;                     // rows per product for pairs collected step by step
  std::vector<at::Tensor> extras;                // as in ForwardRun
};

// Step t of a [T, ...] tensor, as one view moved along from step to step (its storage offset
// set) rather than a new view per step: a select costs a dispatch, a tensor's allocation and its
// release, several times a step. Only for what nothing keeps past its step: the forward's inputs
// and places; what a driver keeps past a step (the backward's carried gradients and collected
// operands, which may be a step's inputs passed through) it keeps as an alias of its own.
class StepView {
 public:
  StepView() = default;
  explicit StepView(const at::Tensor& base) {
    if (base.defined() && base.dim() > 0 && base.size(0) > 0) {
      view_ = base.select(0, 0);
      first_ = view_.storage_offset();
      stride_ = base.stride(0);
      steps_ = base.size(0);
    }
  }
  // whether `v` is this view itself (then it moves with the next step: keep an alias of it instead)
  bool is(const at::Tensor& v) const { return view_.defined() && v.unsafeGetTensorImpl() == view_.unsafeGetTensorImpl(); }
  const at::Tensor& at(int64_t t) {
    TORCH_CHECK(t >= 0 && t < steps_, "torchcells native: step ", t, " of a view over ", steps_, " steps");
    view_.unsafeGetTensorImpl()->set_storage_offset(first_ + t * stride_);
    return view_;
  }

 private:
  at::Tensor view_;
  int64_t first_ = 0, stride_ = 0, steps_ = 0;
};

// A driver's moving views, made once per sequence (addresses stable), and the guard for what it
// keeps past a step: never one of them itself, which would move with the next step, but an alias.
class StepViews {
 public:
  StepView* over(const at::Tensor& base) {
    views_.emplace_back(base);
    return &views_.back();
  }
  at::Tensor kept(const at::Tensor& v) const {
    for (const StepView& view : views_) {
      if (view.is(v)) return v.alias();
    }
    return v;
  }

 private:
  std::deque<StepView> views_;
};

// The forward over all steps. Program inputs: [*hoisted_t, *state, *consts, valid_t?, *extras];
// outputs: [y, *new state (n_outputs - 1), *saved]. The new state leaves go straight into a
// [T+1, ...] history per leaf, y into ys, each per-step saved value into a [T, ...] buffer, a
// once-saved value is kept from step 0, and values saved as state leaves are read from the
// history (nothing copied).
// Returns [ys, *final_state, *history(T+1, ...) per leaf, *saved buffers (undefined for state kinds)].
std::vector<at::Tensor> forward_sequence(Program& prog, const ForwardRun& run) {
  const int64_t T = run.steps;
  const int64_t n_out = run.n_outputs;
  const int64_t y_alias = run.y_alias;
  const std::vector<int64_t>& saved_kind = run.saved_kind;
  const size_t n_s = run.state.size();
  std::vector<at::Tensor> history(n_s);
  for (size_t s = 0; s < n_s; ++s) {
    auto shape = run.state[s].sizes().vec();
    shape.insert(shape.begin(), T + 1);
    history[s] = at::empty(shape, run.state[s].options());
    history[s].select(0, 0).copy_(run.state[s]);
  }
  at::Tensor ys;
  std::vector<at::Tensor> saved(saved_kind.size());
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> dest(static_cast<size_t>(n_out) + saved_kind.size());
  OnceCache once;
  {
    // The drivers run inside an autograd Function (executors/native.py), which records nothing
    // done here: the steps run below autograd and view tracking (each per-step view and call
    // costs less). What is returned is made after this block, as views autograd knows.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // the per-step inputs and places, each one view moved along (StepViews): `inputs` and `dest`
    // hold them for one step, and what a step returns is read in that step only
    StepViews views;
    std::vector<StepView*> hoisted_at, before_at, after_at, saved_at(saved_kind.size(), nullptr);
    for (const auto& h : run.hoisted) hoisted_at.push_back(views.over(h));
    for (size_t s = 0; s < n_s; ++s) {
      before_at.push_back(views.over(history[s]));
      after_at.push_back(views.over(history[s].narrow(0, 1, T)));
    }
    StepView* valid_at = run.valid.has_value() ? views.over(*run.valid) : nullptr;
    StepView* ys_at = nullptr;
    for (int64_t t = 0; t < T; ++t) {
      inputs.clear();
      for (StepView* h : hoisted_at) inputs.push_back(h->at(t));
      for (size_t s = 0; s < n_s; ++s) inputs.push_back(before_at[s]->at(t));
      for (const auto& c : run.consts) inputs.push_back(c);
      if (valid_at != nullptr) inputs.push_back(valid_at->at(t));
      for (const auto& e : run.extras) inputs.push_back(e);
      // new state leaves go straight into the history; y into ys; per-step saved values into their buffers
      for (size_t s = 0; s < n_s; ++s) dest[s + 1] = after_at[s]->at(t);
      if (y_alias < 0 && ys_at != nullptr) dest[0] = ys_at->at(t);
      for (size_t j = 0; j < saved_kind.size(); ++j) {
        dest[n_out + j] = saved_at[j] != nullptr ? saved_at[j]->at(t) : at::Tensor();
      }
      std::vector<at::Tensor> out = prog.run_with(inputs, dest, &once);
      if (y_alias < 0 && !ys.defined()) {
        auto shape = out[0].sizes().vec();
        shape.insert(shape.begin(), T);
        ys = at::empty(shape, out[0].options());
        ys.select(0, 0).copy_(out[0]);
        ys_at = views.over(ys);
      }
      for (size_t j = 0; j < saved_kind.size(); ++j) {
        if (saved_kind[j] == SK_PER_STEP && !saved[j].defined()) {
          const at::Tensor& v = out[n_out + j];
          auto shape = v.sizes().vec();
          shape.insert(shape.begin(), T);
          saved[j] = at::empty(shape, v.options());
          saved[j].select(0, 0).copy_(v);
          saved_at[j] = views.over(saved[j]);
        } else if (saved_kind[j] == SK_ONCE && t == 0) {
          saved[j] = out[n_out + j].contiguous();
        }
      }
    }
  }
  // A once-saved value that lies in a per-sequence input (a weight) is made again as a view of
  // that input, sharing its version counter: a change to the weight before the backward is caught.
  for (size_t j = 0; j < saved_kind.size(); ++j) {
    if (saved_kind[j] != SK_ONCE || !saved[j].defined()) continue;
    for (const at::Tensor& c : run.consts) {
      if (c.defined() && c.has_storage() && saved[j].has_storage() && saved[j].is_alias_of(c)) {
        saved[j] = c.as_strided(saved[j].sizes(), saved[j].strides(), saved[j].storage_offset());
        break;
      }
    }
  }
  std::vector<at::Tensor> result;
  if (y_alias < 0) result.push_back(ys);
  else result.push_back(history[y_alias].narrow(0, 1, T));
  for (size_t s = 0; s < n_s; ++s) result.push_back(history[s].select(0, T));
  for (size_t s = 0; s < n_s; ++s) result.push_back(history[s]);
  for (size_t j = 0; j < saved_kind.size(); ++j) result.push_back(saved[j]);
  return result;
}

// The backward over all steps, in reverse. Program inputs: [*saved values, d_y, *d_state, *extras];
// outputs: [*grads (n_grads), *deferred operand pairs]. A pair whose left operand comes transposed
// and whose operands are 2-D is one product over all T·B rows after the loop, reading its
// operands where they already lie for all steps (operand_source), or else from a [T, ...] buffer
// of their own filled step by step; other pairs are collected and multiplied in chunks of at
// least chunk_rows rows.
// Returns [*d_hoisted (or undefined), *d_state, *d_consts (summed), *summed deferred products].
std::vector<at::Tensor> backward_sequence(Program& prog, const BackwardRun& run) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in forward_sequence
  const int64_t T = run.steps;
  const int64_t n_c = run.n_consts;
  const int64_t n_grads = run.n_grads;
  const int64_t chunk_rows = run.chunk_rows;
  const std::vector<int64_t>& saved_kind = run.saved_kind;
  const std::vector<int64_t>& saved_index = run.saved_index;
  const std::vector<at::Tensor>& history = run.history;
  const std::vector<at::Tensor>& d_hoisted = run.d_hoisted;
  const std::vector<bool>& transposed = run.transposed;
  const int64_t n_h = static_cast<int64_t>(d_hoisted.size());
  const int64_t n_s = static_cast<int64_t>(history.size());
  const at::Tensor d_ys = run.d_ys.has_value() ? *run.d_ys : at::Tensor();
  std::vector<at::Tensor> carry;
  for (const auto& g : run.d_final) carry.push_back(g.has_value() ? *g : at::Tensor());
  std::vector<bool> got(static_cast<size_t>(n_h), false);
  std::vector<at::Tensor> acc(static_cast<size_t>(n_c));
  const size_t n_def = transposed.size();
  // A transposed pair's operands are read for all steps at once after the loop: from where they
  // already lie (operand_source), or else from a [T, ...] buffer of their own, filled step by step.
  std::vector<bool> from_buffers(n_def);
  std::vector<int64_t> kinds(2 * n_def), indices(2 * n_def);
  std::vector<at::Tensor> own(2 * n_def);
  for (size_t p = 0; p < n_def; ++p) {
    from_buffers[p] = transposed[p];
    for (size_t k = 0; k < 2; ++k) {
      const size_t j = 2 * p + k;
      kinds[j] = run.operand_source[j];
      indices[j] = kinds[j] == OS_OWN_BUFFER ? static_cast<int64_t>(j) : run.operand_index[j];
    }
  }
  std::vector<std::vector<at::Tensor>> lhs(n_def), rhs(n_def);
  std::vector<at::Tensor> summed(n_def);
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> dest;
  OnceCache once;
  int64_t rows_per_step = 1;
  // the per-step inputs and places, each one view moved along (StepViews)
  StepViews views;
  std::vector<StepView*> saved_at(saved_kind.size(), nullptr), d_hist_at(static_cast<size_t>(n_s), nullptr);
  std::vector<StepView*> d_hoisted_at(static_cast<size_t>(n_h), nullptr), own_at(2 * n_def, nullptr);
  for (size_t j = 0; j < saved_kind.size(); ++j) {
    switch (saved_kind[j]) {
      case SK_PER_STEP: saved_at[j] = views.over(*run.saved[j]); break;
      case SK_ONCE: break;
      case SK_STATE_BEFORE: saved_at[j] = views.over(history[saved_index[j]].narrow(0, 0, T)); break;
      default: saved_at[j] = views.over(history[saved_index[j]].narrow(0, 1, T)); break;  // SK_STATE_AFTER
    }
  }
  for (int64_t s = 0; s < n_s; ++s) {
    if (run.d_hist.size() > static_cast<size_t>(s) && run.d_hist[s].has_value() && run.d_hist[s]->defined()) {
      d_hist_at[s] = views.over(*run.d_hist[s]);
    }
  }
  StepView* d_ys_at = d_ys.defined() ? views.over(d_ys) : nullptr;
  for (int64_t i = 0; i < n_h; ++i) d_hoisted_at[i] = views.over(d_hoisted[i]);
  // what is kept past its step goes through views.kept: the collected operands of a pair often
  // are a step's input (a weight on the left of its product: test_fused's left-weight cell); a
  // carried gradient that is a step's input passed through is guarded the same way, though no
  // derived program we know makes one
  for (int64_t t = T - 1; t >= 0; --t) {
    inputs.clear();
    for (size_t j = 0; j < saved_kind.size(); ++j) {
      inputs.push_back(saved_kind[j] == SK_ONCE ? *run.saved[j] : saved_at[j]->at(t));
    }
    std::vector<at::Tensor> tangents(carry.begin(), carry.end());
    for (int64_t s = 0; s < n_s; ++s) {
      if (d_hist_at[s] != nullptr) {
        const at::Tensor& g = d_hist_at[s]->at(t);
        tangents[s] = tangents[s].defined() ? tangents[s] + g : g;
      }
    }
    tangents.insert(tangents.begin(), d_ys_at != nullptr ? d_ys_at->at(t) : at::Tensor());
    for (size_t k = 0; k < tangents.size(); ++k) {
      if (!tangents[k].defined()) tangents[k] = run.zero_like[k];  // programs never write their inputs
      inputs.push_back(tangents[k]);
    }
    for (const auto& e : run.extras) inputs.push_back(e);
    dest.assign(static_cast<size_t>(n_grads) + 2 * n_def, at::Tensor());
    for (int64_t i = 0; i < n_h; ++i) dest[i] = d_hoisted_at[i]->at(t);
    for (size_t j = 0; j < 2 * n_def; ++j) {
      if (own_at[j] != nullptr) dest[n_grads + j] = own_at[j]->at(t);
    }
    std::vector<at::Tensor> out = prog.run_with(inputs, dest, &once);
    for (int64_t i = 0; i < n_h; ++i) got[i] = got[i] || out[i].defined();
    for (int64_t s = 0; s < n_s; ++s) carry[s] = views.kept(out[n_h + s]);
    for (int64_t k = 0; k < n_c; ++k) {
      const at::Tensor& g = out[n_h + n_s + k];
      if (!g.defined()) continue;
      if (!acc[k].defined()) acc[k] = g.clone();
      else acc[k].add_(g);
    }
    for (size_t p = 0; p < n_def; ++p) {
      const at::Tensor& a = out[n_grads + 2 * p];
      const at::Tensor& b = out[n_grads + 2 * p + 1];
      if (from_buffers[p] && t == T - 1) {
        if (a.dim() != 2 || b.dim() != 2) {
          from_buffers[p] = false;
        } else {
          for (size_t k = 0; k < 2; ++k) {
            if (kinds[2 * p + k] != OS_OWN_BUFFER) continue;
            const at::Tensor& v = k == 0 ? a : b;
            auto shape = v.sizes().vec();
            shape.insert(shape.begin(), T);
            own[2 * p + k] = at::empty(shape, v.options());
            own[2 * p + k].select(0, t).copy_(v);
            own_at[2 * p + k] = views.over(own[2 * p + k]);
          }
        }
      }
      if (from_buffers[p]) continue;
      rows_per_step = std::max<int64_t>(1, transposed[p] ? a.size(0) : a.size(-1));
      lhs[p].push_back(views.kept(a));
      rhs[p].push_back(views.kept(b));
      const int64_t chunk = std::max<int64_t>(1, (chunk_rows + rows_per_step - 1) / rows_per_step);
      if (static_cast<int64_t>(lhs[p].size()) >= chunk || t == 0) {
        at::Tensor left = transposed[p] ? at::cat(lhs[p], 0).t() : at::cat(lhs[p], 1);
        at::Tensor right = at::cat(rhs[p], 0);
        if (!summed[p].defined()) summed[p] = at::mm(left, right);
        else summed[p].addmm_(left, right);
        lhs[p].clear();
        rhs[p].clear();
      }
    }
  }
  auto all_steps = [&](int64_t kind, int64_t index) -> at::Tensor {
    at::Tensor b;
    switch (kind) {
      case OS_OWN_BUFFER: b = own[index]; break;
      case OS_HOISTED_GRAD: b = d_hoisted[index]; break;
      case OS_SAVED: b = *run.saved[index]; break;
      case OS_STATE_BEFORE: b = history[index].narrow(0, 0, T); break;
      default: b = history[index].narrow(0, 1, T); break;  // OS_STATE_AFTER
    }
    return b.reshape({-1, b.size(-1)});
  };
  for (size_t p = 0; p < n_def; ++p) {
    if (from_buffers[p] && T > 0) {
      summed[p] = at::mm(all_steps(kinds[2 * p], indices[2 * p]).t(),
                         all_steps(kinds[2 * p + 1], indices[2 * p + 1]));
    }
  }
  std::vector<at::Tensor> result;
  for (int64_t i = 0; i < n_h; ++i) result.push_back(got[i] ? d_hoisted[i] : at::Tensor());
  for (auto& g : carry) result.push_back(g);
  for (int64_t k = 0; k < n_c; ++k) result.push_back(acc[k]);
  for (size_t p = 0; p < n_def; ++p) result.push_back(summed[p]);
  return result;
}

// ---- The linear recurrence h_t = e^{log a_t} h_{t-1} + u_t of the scan path (engine/scan.py) ----
// Sequential in time, vectorized and split over threads across the N = B*H independent lanes:
// O(1) work per element and one pass over memory each way, where a parallel-prefix scan on
// a CPU of few cores costs several passes (and the loop a dispatch per step). Each lane's
// arithmetic is the loop's order of operations, so threads never change a result.

// Lanes per task: a task's rows (a few KB) stay in L1 from one step to the next.
constexpr int64_t kScanLanes = 512;

template <typename scalar_t>
void scan_forward_lanes(const scalar_t* la, const scalar_t* u, const scalar_t* h0, scalar_t* h,
                        int64_t T, int64_t N, bool backwards, int64_t n0, int64_t n1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = backwards ? T - 1 - s : s;
    const scalar_t* prev = s == 0 ? h0 : h + (backwards ? t + 1 : t - 1) * N;
    const int64_t row = t * N;
    for (int64_t n = n0; n < n1; n += W) {  // a partial vector at the end: the same arithmetic
      const int64_t k = std::min<int64_t>(W, n1 - n);
      const Vec a = Vec::loadu(la + row + n, k).exp();
      at::vec::fmadd(a, Vec::loadu(prev + n, k), Vec::loadu(u + row + n, k)).store(h + row + n, k);
    }
  }
}

// Forward: h (T, N) from log_a (T, N), u (T, N), h0 (N); backwards reads t = T-1 ... 0.
at::Tensor linear_scan_forward(const at::Tensor& log_a, const at::Tensor& u, const at::Tensor& h0,
                               bool backwards) {
  TORCH_CHECK(log_a.dim() == 2 && u.sizes() == log_a.sizes() && h0.dim() == 1 && h0.size(0) == log_a.size(1),
              "linear_scan_forward: expected log_a, u (T, N) and h0 (N)");
  const auto la = log_a.contiguous(), uc = u.contiguous(), hc = h0.contiguous();
  auto h = at::empty_like(la);
  const int64_t T = la.size(0), N = la.size(1);
  AT_DISPATCH_FLOATING_TYPES(la.scalar_type(), "linear_scan_forward", [&] {
    const scalar_t* pa = la.data_ptr<scalar_t>();
    const scalar_t* pu = uc.data_ptr<scalar_t>();
    const scalar_t* p0 = hc.data_ptr<scalar_t>();
    scalar_t* ph = h.data_ptr<scalar_t>();
    at::parallel_for(0, N, kScanLanes, [&](int64_t n0, int64_t n1) {
      scan_forward_lanes<scalar_t>(pa, pu, p0, ph, T, N, backwards, n0, n1);
    });
  });
  return h;
}

// Backward of the forward scan in one pass against reading order: g_t = dL/dh_t + a_{t+1} g_{t+1}
// (the last state's gradient enters with a = 1), d log a_t = g_t a_t h_{t-1}, du_t = g_t,
// dh0 = a_first g_first. Returns (g, grad_log_a, grad_h0).
template <typename scalar_t>
void scan_backward_lanes(const scalar_t* la, const scalar_t* h0, const scalar_t* h, const scalar_t* gh,
                         const scalar_t* glast, scalar_t* g, scalar_t* gla, scalar_t* gh0,
                         int64_t T, int64_t N, bool backwards, int64_t n0, int64_t n1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size();
  std::copy(glast + n0, glast + n1, gh0 + n0);  // the carry a_{t+1} g_{t+1}, kept in gh0
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = backwards ? T - 1 - s : s;
    const scalar_t* before = s == 0 ? h0 : h + (backwards ? t + 1 : t - 1) * N;
    const int64_t row = t * N;
    for (int64_t n = n0; n < n1; n += W) {  // a partial vector at the end: the same arithmetic
      const int64_t k = std::min<int64_t>(W, n1 - n);
      const Vec a = Vec::loadu(la + row + n, k).exp();
      const Vec gt = Vec::loadu(gh + row + n, k) + Vec::loadu(gh0 + n, k);
      gt.store(g + row + n, k);
      (gt * a * Vec::loadu(before + n, k)).store(gla + row + n, k);
      (a * gt).store(gh0 + n, k);
    }
  }
}

std::vector<at::Tensor> linear_scan_backward(const at::Tensor& log_a, const at::Tensor& h0, const at::Tensor& h,
                                             const at::Tensor& grad_h, const at::Tensor& grad_last,
                                             bool backwards) {
  TORCH_CHECK(log_a.dim() == 2 && h.sizes() == log_a.sizes() && grad_h.sizes() == log_a.sizes() &&
                  h0.dim() == 1 && h0.size(0) == log_a.size(1) && grad_last.sizes() == h0.sizes(),
              "linear_scan_backward: expected log_a, h, grad_h (T, N) and h0, grad_last (N)");
  const auto la = log_a.contiguous(), hc = h.contiguous(), gc = grad_h.contiguous();
  const auto h0c = h0.contiguous(), lc = grad_last.contiguous();
  auto g = at::empty_like(la), gla = at::empty_like(la), gh0 = at::empty_like(h0c);
  const int64_t T = la.size(0), N = la.size(1);
  AT_DISPATCH_FLOATING_TYPES(la.scalar_type(), "linear_scan_backward", [&] {
    at::parallel_for(0, N, kScanLanes, [&](int64_t n0, int64_t n1) {
      scan_backward_lanes<scalar_t>(la.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(),
                                    gc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                    gla.data_ptr<scalar_t>(), gh0.data_ptr<scalar_t>(), T, N, backwards, n0, n1);
    });
  });
  return {g, gla, gh0};
}


// ---- The scan path's gated recurrence: product, coefficients and recurrence together (engine/gated_scan.py) ----
// For the minimal cells the coefficients a_t, b_t of h_t = a_t h_{t-1} + b_t are a fixed elementwise
// function of the step's pre-activations k_t = x_t W^T + b. A block of steps at a time (its k stays in
// cache), the forward makes k with one product and computes a_t, b_t and h_t lane by lane in vector
// registers; the backward makes k again and runs g_t = dL/dh_t + a_{t+1} g_{t+1} in reverse, writing
// dL/dk_t (the coefficients recomputed from k), then the block's products for dL/dx, dL/dW, dL/db.
// The arithmetic is the loop's step in linear space, written so that nothing overflows (sigma from
// e = exp(-|v|), minLSTM's normalized gates without the 0/0 where both gates underflow) and with one
// division per lane group (min_gru_gates, min_lstm_gates). Lanes split over threads as in
// linear_scan_forward; each lane's arithmetic is its own, whichever lanes share its vector.

// One step's coefficients (a, b) of a lane group and what the backward needs of them.
template <typename Vec>
struct GateValues {
  Vec a, b_over_c, c, dc;  // a; b = b_over_c * c with c = g(k_h); dc = g'(k_h)
  Vec s_f, s_i;            // minLSTM: sigma(-k_f), sigma(-k_i) (with_slopes only)
};

// Every sigma here is written from e = exp(-|v|), which never overflows: sigma(|v|) = 1 / (1 + e),
// sigma(-|v|) = e / (1 + e). The divisions of a lane group are one: 1 / (p_1 p_2 ...) times the
// other factors gives each 1 / p_q (every p_q is in [1, 4], or in [sqrt(min normal), 4] for
// minLSTM's u + w below, so nothing over- or underflows).

// sigma(v) and sigma(-v) from e = exp(-|v|) and r = 1 / (1 + e).
template <typename Vec>
inline void sigmoids(const Vec& v, const Vec& e, const Vec& r, Vec& pos, Vec& neg) {
  const Vec er = e * r, nonneg = v >= Vec(0);
  pos = Vec::blendv(er, r, nonneg);
  neg = Vec::blendv(r, er, nonneg);
}

// The candidate g(v) = v + 1/2 (v >= 0), sigma(v) (v < 0), and its derivative 1, resp. sigma(v) sigma(-v).
template <typename Vec>
inline void candidate(const Vec& v, const Vec& e, const Vec& r, GateValues<Vec>& out) {
  Vec pos, neg;
  sigmoids(v, e, r, pos, neg);
  const Vec nonneg = v >= Vec(0);
  out.c = Vec::blendv(pos, v + Vec(0.5), nonneg);
  out.dc = Vec::blendv(pos * neg, Vec(1), nonneg);
}

// minGRU: k = (k_z, k_h), a = sigma(-k_z) = 1 - z, b = z g(k_h).
template <typename Vec>
inline void min_gru_gates(const Vec* k, GateValues<Vec>& v) {
  const Vec one(1);
  const Vec ez = k[0].abs().neg().exp(), ec = k[1].abs().neg().exp();
  const Vec pz = one + ez, pc = one + ec;
  const Vec R = one / (pz * pc);
  sigmoids(k[0], ez, pc * R, v.b_over_c, v.a);
  candidate(k[1], ec, pz * R, v);
}

// minLSTM: k = (k_f, k_i, k_h), a = f' = f / (f + i), b = i' g(k_h) with i' = i / (f + i): the loop's
// sigma(d), sigma(-d) with d = log f - log i, without logarithms and without the 0/0 where both
// sigma underflow. With sigma(k) = n / (1 + e), n = e for k < 0 and 1 otherwise, f' = u / (u + w),
// u = n_f (1 + e_i), w = n_i (1 + e_f). Where both n are below sqrt(min normal) (k_f, k_i < -43 in
// float32) u and w are scaled by 1 / max(n_f, n_i) first: the larger becomes 1 + e, the smaller
// exp(-|min(k_f, 0) - min(k_i, 0)|) (1 + e) -- an exp taken only for vectors that have such a lane.
template <bool with_slopes, typename Vec>
inline void min_lstm_gates(const Vec* k, GateValues<Vec>& v) {
  using scalar_t = typename Vec::value_type;
  const Vec one(1), zero(0);
  const Vec ef = k[0].abs().neg().exp(), ei = k[1].abs().neg().exp(), ec = k[2].abs().neg().exp();
  const Vec pf = one + ef, pi = one + ei, pc = one + ec;
  const Vec nf = Vec::blendv(one, ef, k[0] < zero), ni = Vec::blendv(one, ei, k[1] < zero);
  Vec u = nf * pi, w = ni * pf;
  const Vec tiny = at::vec::maximum(nf, ni) < Vec(std::sqrt(std::numeric_limits<scalar_t>::min()));
  if (tiny.zero_mask() != (1 << Vec::size()) - 1) {
    const Vec mf = at::vec::minimum(k[0], zero), mi = at::vec::minimum(k[1], zero);
    const Vec shrink = (mf - mi).abs().neg().exp(), f_first = mf >= mi;
    u = Vec::blendv(u, Vec::blendv(shrink, one, f_first) * pi, tiny);
    w = Vec::blendv(w, Vec::blendv(one, shrink, f_first) * pf, tiny);
  }
  const Vec sum = u + w;
  Vec r, rc;
  if constexpr (with_slopes) {  // and sigma(-k) = e / (1 + e) for k >= 0, 1 / (1 + e) below
    const Vec fi = pf * pi, sc = sum * pc;
    const Vec R = one / (fi * sc);
    r = fi * pc * R;
    rc = sum * fi * R;
    const Vec rf = sc * pi * R, ri = sc * pf * R;
    v.s_f = Vec::blendv(rf, ef * rf, k[0] >= zero);
    v.s_i = Vec::blendv(ri, ei * ri, k[1] >= zero);
  } else {
    const Vec R = one / (sum * pc);
    r = pc * R;
    rc = sum * R;
  }
  v.a = u * r;
  v.b_over_c = w * r;
  candidate(k[2], ec, rc, v);
}

template <int64_t kind, bool with_slopes = false, typename Vec>
inline GateValues<Vec> gate_values(const Vec* k) {
  GateValues<Vec> v;
  if constexpr (kind == SG_MIN_GRU) {
    min_gru_gates(k, v);
  } else {
    min_lstm_gates<with_slopes>(k, v);
  }
  return v;
}

template <int64_t kind>
constexpr int64_t n_gates() { return kind == SG_MIN_GRU ? 2 : 3; }

// The lanes [n0, n1) of the N = B*H, walked as row segments of one sequence b each.
template <typename F>
inline void for_row_segments(int64_t n0, int64_t n1, int64_t H, F&& f) {
  for (int64_t n = n0; n < n1;) {
    const int64_t b = n / H, j0 = n - b * H, j1 = std::min<int64_t>(H, j0 + (n1 - n));
    f(b, j0, j1);
    n += j1 - j0;
  }
}

// The G gates' pre-activations of lanes [j, j + m) of one row of k (and the bias, where there is one).
template <int64_t G, typename scalar_t, typename Vec>
inline void load_preactivations(const scalar_t* kr, const scalar_t* bias, int64_t H, int64_t j, int64_t m, Vec* kv) {
  for (int64_t q = 0; q < G; ++q) {
    kv[q] = Vec::loadu(kr + q * H + j, m);
    if (bias != nullptr) kv[q] = kv[q] + Vec::loadu(bias + q * H + j, m);
  }
}

template <typename scalar_t, int64_t kind>
void gated_forward_lanes(const scalar_t* k, const scalar_t* bias, const scalar_t* h0, const bool* valid, scalar_t* h,
                         int64_t T, int64_t B, int64_t H, int64_t n0, int64_t n1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size(), G = n_gates<kind>();
  for (int64_t t = 0; t < T; ++t) {
    for_row_segments(n0, n1, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const int64_t row = t * B + b;
      const scalar_t* prev = t == 0 ? h0 + b * H : h + (row - B) * H;
      scalar_t* out = h + row * H;
      if (valid != nullptr && !valid[row]) {  // a padded step carries the state: a = 1, b = 0
        std::copy(prev + j0, prev + j1, out + j0);
        return;
      }
      const scalar_t* kr = k + row * G * H;
      for (int64_t j = j0; j < j1; j += W) {  // a partial vector at the end: the same arithmetic
        const int64_t m = std::min<int64_t>(W, j1 - j);
        Vec kv[G];
        load_preactivations<G>(kr, bias, H, j, m, kv);
        const auto v = gate_values<kind>(kv);
        at::vec::fmadd(v.a, Vec::loadu(prev + j, m), v.b_over_c * v.c).store(out + j, m);
      }
    });
  }
}

template <typename scalar_t, int64_t kind>
void gated_backward_lanes(const scalar_t* k, const scalar_t* bias, const scalar_t* h0, const scalar_t* h,
                          const bool* valid, const scalar_t* gh, int64_t gh_t, int64_t gh_b, scalar_t* dk,
                          scalar_t* carry, int64_t T, int64_t B, int64_t H, int64_t n0, int64_t n1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size(), G = n_gates<kind>();
  for (int64_t t = T - 1; t >= 0; --t) {  // carry: a_{t+1} g_{t+1} in, a_t g_t out
    for_row_segments(n0, n1, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const int64_t row = t * B + b;
      const scalar_t* prev = t == 0 ? h0 + b * H : h + (row - B) * H;
      const scalar_t* grad = gh + t * gh_t + b * gh_b;  // dL/dh_t, rows at any strides
      scalar_t* c = carry + b * H;
      scalar_t* dkr = dk + row * G * H;
      if (valid != nullptr && !valid[row]) {  // a = 1, b = 0: g passes through, dL/dk = 0
        for (int64_t j = j0; j < j1; ++j) c[j] += grad[j];
        for (int64_t q = 0; q < G; ++q) std::fill(dkr + q * H + j0, dkr + q * H + j1, scalar_t(0));
        return;
      }
      const scalar_t* kr = k + row * G * H;
      for (int64_t j = j0; j < j1; j += W) {
        const int64_t m = std::min<int64_t>(W, j1 - j);
        Vec kv[G];
        load_preactivations<G>(kr, bias, H, j, m, kv);
        const auto v = gate_values<kind, true>(kv);
        const Vec g = Vec::loadu(grad + j, m) + Vec::loadu(c + j, m);
        const Vec before = Vec::loadu(prev + j, m);
        if constexpr (kind == SG_MIN_GRU) {  // da/dk_z = -a z, db/dk_z = a z g(k_h)
          (g * v.a * v.b_over_c * (v.c - before)).store(dkr + j, m);
        } else {  // dL/dd = g f' i' (h_{t-1} - g(k_h)); dd/dk_f = sigma(-k_f), dd/dk_i = -sigma(-k_i)
          const Vec dd = g * v.a * v.b_over_c * (before - v.c);
          (dd * v.s_f).store(dkr + j, m);
          (dd.neg() * v.s_i).store(dkr + H + j, m);
        }
        (g * v.b_over_c * v.dc).store(dkr + (G - 1) * H + j, m);
        (v.a * g).store(c + j, m);
      }
    });
  }
}

// The arguments of a gated scan: x (T, B, I), the stacked weight (G*H, I) and bias (G*H) of
// one dtype (float32/float64), h0 (B, H), valid (T, B) bool or none; block: steps per block.
struct GatedArgs {
  at::Tensor x, weight, h0, valid;
  c10::optional<at::Tensor> bias;
  int64_t gates, block, T, B, I, H, G;
};

GatedArgs gated_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const at::Tensor& h0, const c10::optional<at::Tensor>& valid, int64_t gates, int64_t block,
                     const char* name) {
  TORCH_CHECK(gates == SG_MIN_GRU || gates == SG_MIN_LSTM, name, ": unknown gates ", gates);
  const int64_t G = gates == SG_MIN_GRU ? 2 : 3;
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 2 && weight.dim() == 2 && x.size(1) == h0.size(0) &&
                  weight.size(0) == G * h0.size(1) && weight.size(1) == x.size(2) && block > 0,
              name, ": expected x (T, B, I), weight (G*H, I), h0 (B, H) and block > 0");
  const auto dtype = x.scalar_type();
  TORCH_CHECK((dtype == at::kFloat || dtype == at::kDouble) && weight.scalar_type() == dtype &&
                  h0.scalar_type() == dtype && (!bias.has_value() || bias->scalar_type() == dtype),
              name, ": expected x, weight, bias and h0 of one dtype, float32 or float64");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == weight.size(0)), name,
              ": expected bias (G*H)");
  TORCH_CHECK(!valid.has_value() || (valid->scalar_type() == at::kBool && valid->dim() == 2 &&
                                     valid->size(0) == x.size(0) && valid->size(1) == x.size(1)),
              name, ": expected valid (T, B) bool");
  GatedArgs a;
  a.x = x.contiguous();
  a.weight = weight.contiguous();
  a.bias = bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : c10::nullopt;
  a.h0 = h0.contiguous();
  a.valid = valid.has_value() ? valid->contiguous() : at::Tensor();
  a.gates = gates;
  a.block = block;
  a.T = x.size(0), a.B = x.size(1), a.I = x.size(2), a.H = h0.size(1), a.G = G;
  return a;
}

// x W^T for the steps [t0, t0 + n), into buf (a buffer of at least n*B*G*H numbers); the passes add
// the bias as they read it (addmm would first copy it into every row).
at::Tensor block_products(const GatedArgs& a, int64_t t0, int64_t n, at::Tensor& buf) {
  auto kb = buf.narrow(0, 0, n * a.B);
  at::mm_out(kb, a.x.narrow(0, t0, n).reshape({n * a.B, a.I}), a.weight.t());
  return kb;
}

// Forward: h (T, B, H) of the gated scan over x, a block of steps at a time: the block's
// pre-activations (one product, kept in cache) then its coefficients and recurrence in one pass.
at::Tensor gated_scan_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const at::Tensor& h0, const c10::optional<at::Tensor>& valid, int64_t gates,
                              int64_t block) {
  const auto a = gated_args(x, weight, bias, h0, valid, gates, block, "gated_scan_forward");
  const int64_t T = a.T, B = a.B, H = a.H;
  auto h = at::empty({T, B, H}, a.x.options());
  auto buf = at::empty({std::min(block, T) * B, a.G * H}, a.x.options());
  const bool* pv = a.valid.defined() ? a.valid.data_ptr<bool>() : nullptr;
  for (int64_t t0 = 0; t0 < T; t0 += block) {
    const int64_t n = std::min(block, T - t0);
    const auto kb = block_products(a, t0, n, buf);
    AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "gated_scan_forward", [&] {
      const scalar_t* pk = kb.data_ptr<scalar_t>();
      const scalar_t* pb = a.bias.has_value() ? a.bias->data_ptr<scalar_t>() : nullptr;
      scalar_t* ph = h.data_ptr<scalar_t>() + t0 * B * H;
      const scalar_t* p0 = t0 == 0 ? a.h0.data_ptr<scalar_t>() : ph - B * H;
      const bool* vb = pv == nullptr ? nullptr : pv + t0 * B;
      at::parallel_for(0, B * H, kScanLanes, [&](int64_t n0, int64_t n1) {
        if (gates == SG_MIN_GRU) {
          gated_forward_lanes<scalar_t, SG_MIN_GRU>(pk, pb, p0, vb, ph, n, B, H, n0, n1);
        } else {
          gated_forward_lanes<scalar_t, SG_MIN_LSTM>(pk, pb, p0, vb, ph, n, B, H, n0, n1);
        }
      });
    });
  }
  return h;
}

// Backward, blocks in reverse: the block's pre-activations again (a product is cheaper than
// keeping k), dL/dk of the block in one pass against time (the carry g passed from block to
// block), then dL/dx = dk W, dL/dW += dk^T x, dL/db += sum dk for the block. Returns
// (grad_x, grad_weight, grad_bias, grad_h0); grad_x, grad_weight and grad_bias are undefined where
// their flag in `need` (x, weight, bias) is false.
std::vector<at::Tensor> gated_scan_backward(const at::Tensor& x, const at::Tensor& weight,
                                            const c10::optional<at::Tensor>& bias, const at::Tensor& h0,
                                            const at::Tensor& h, const c10::optional<at::Tensor>& valid,
                                            const at::Tensor& grad_h, const at::Tensor& grad_last, int64_t gates,
                                            int64_t block, std::vector<bool> need) {
  const auto a = gated_args(x, weight, bias, h0, valid, gates, block, "gated_scan_backward");
  const int64_t T = a.T, B = a.B, H = a.H, GH = a.G * a.H;
  TORCH_CHECK(h.dim() == 3 && h.size(0) == T && h.size(1) == B && h.size(2) == H && grad_h.sizes() == h.sizes() &&
                  grad_last.sizes() == a.h0.sizes() && h.scalar_type() == a.x.scalar_type() &&
                  grad_h.scalar_type() == a.x.scalar_type() && grad_last.scalar_type() == a.x.scalar_type() &&
                  need.size() == 3,
              "gated_scan_backward: expected h, grad_h (T, B, H), grad_last (B, H) of x's dtype, three flags");
  const auto hc = h.contiguous();
  auto carry = grad_last.contiguous().clone();  // a_{t+1} g_{t+1}; at the end dL/dh0
  // dL/dh is read row by row at its own strides; only rows that are not contiguous are copied (a
  // gradient of sum() is one number expanded: one row of it, expanded again).
  auto gh = grad_h;
  if (gh.stride(2) != 1) {
    gh = gh.stride(0) == 0 && gh.stride(1) == 0 ? gh.select(0, 0).select(0, 0).contiguous().expand({T, B, H})
                                                : gh.contiguous();
  }
  at::Tensor gx, gw, gb;
  if (need[0]) gx = at::empty_like(a.x);
  if (need[1]) gw = at::zeros_like(a.weight);
  if (need[2] && a.bias.has_value()) gb = at::zeros_like(*a.bias);
  auto buf = at::empty({std::min(block, T) * B, GH}, a.x.options());
  auto dk_buf = at::empty_like(buf);
  const bool* pv = a.valid.defined() ? a.valid.data_ptr<bool>() : nullptr;
  for (int64_t t0 = (T - 1) / block * block; T > 0 && t0 >= 0; t0 -= block) {
    const int64_t n = std::min(block, T - t0);
    const auto kb = block_products(a, t0, n, buf);
    auto dk = dk_buf.narrow(0, 0, n * B);
    AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "gated_scan_backward", [&] {
      const scalar_t* ph = hc.data_ptr<scalar_t>() + t0 * B * H;
      const scalar_t* p0 = t0 == 0 ? a.h0.data_ptr<scalar_t>() : ph - B * H;
      const bool* vb = pv == nullptr ? nullptr : pv + t0 * B;
      const scalar_t* pk = kb.data_ptr<scalar_t>();
      const scalar_t* pb = a.bias.has_value() ? a.bias->data_ptr<scalar_t>() : nullptr;
      const scalar_t* pg = gh.data_ptr<scalar_t>() + t0 * gh.stride(0);
      scalar_t* pdk = dk.data_ptr<scalar_t>();
      scalar_t* pc = carry.data_ptr<scalar_t>();
      at::parallel_for(0, B * H, kScanLanes, [&](int64_t n0, int64_t n1) {
        if (gates == SG_MIN_GRU) {
          gated_backward_lanes<scalar_t, SG_MIN_GRU>(pk, pb, p0, ph, vb, pg, gh.stride(0), gh.stride(1), pdk, pc, n,
                                                     B, H, n0, n1);
        } else {
          gated_backward_lanes<scalar_t, SG_MIN_LSTM>(pk, pb, p0, ph, vb, pg, gh.stride(0), gh.stride(1), pdk, pc, n,
                                                      B, H, n0, n1);
        }
      });
    });
    if (gx.defined()) {
      auto gxb = gx.narrow(0, t0, n).view({n * B, a.I});
      at::mm_out(gxb, dk, a.weight);
    }
    if (gw.defined()) gw.addmm_(dk.t(), a.x.narrow(0, t0, n).reshape({n * B, a.I}));
    if (gb.defined()) gb.add_(dk.sum(0));
  }
  return {gx, gw, gb, carry};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<Program>(m, "Program")
      .def(py::init<int64_t, std::vector<int64_t>>(), py::arg("n_slots"), py::arg("output_slots"))
      .def("add_call", &Program::add_call, py::arg("name"), py::arg("overload"), py::arg("kinds"), py::arg("ints"),
           py::arg("doubles"), py::arg("lists"), py::arg("outs"), py::arg("once"))
      .def("add_fused", &Program::add_fused, py::arg("rows"), py::arg("cols"), py::arg("inputs"), py::arg("code"),
           py::arg("imms"), py::arg("outputs"), py::arg("allocs"), py::arg("n_regs"))
      .def("add_product", &Program::add_product, py::arg("a"), py::arg("blocks"), py::arg("out"), py::arg("cols"),
           py::arg("block_cols"))
      .def("run", &Program::run);
  m.def("has_blocked_products", [] { return kBlockedProducts; },
        "whether this build runs per-step float32 products on column blocks (torch's batch-reduce GEMM)");
  // The structs are made with every field named (one conversion, as cheap as positional
  // arguments); their fields stay readable and writable from Python.
  py::class_<ForwardRun>(m, "ForwardRun")
      .def(py::init([](std::vector<at::Tensor> hoisted, std::vector<at::Tensor> state, std::vector<at::Tensor> consts,
                       c10::optional<at::Tensor> valid, std::vector<at::Tensor> extras, int64_t steps, int64_t n_outputs,
                       int64_t y_alias, std::vector<int64_t> saved_kind, std::vector<int64_t> saved_index) {
             ForwardRun r;
             r.hoisted = std::move(hoisted);
             r.state = std::move(state);
             r.consts = std::move(consts);
             r.valid = std::move(valid);
             r.extras = std::move(extras);
             r.steps = steps;
             r.n_outputs = n_outputs;
             r.y_alias = y_alias;
             r.saved_kind = std::move(saved_kind);
             r.saved_index = std::move(saved_index);
             return r;
           }),
           py::kw_only(), py::arg("hoisted"), py::arg("state"), py::arg("consts"), py::arg("valid"), py::arg("extras"),
           py::arg("steps"), py::arg("n_outputs"), py::arg("y_alias"), py::arg("saved_kind"), py::arg("saved_index"))
      .def_readwrite("hoisted", &ForwardRun::hoisted)
      .def_readwrite("state", &ForwardRun::state)
      .def_readwrite("consts", &ForwardRun::consts)
      .def_readwrite("valid", &ForwardRun::valid)
      .def_readwrite("extras", &ForwardRun::extras)
      .def_readwrite("steps", &ForwardRun::steps)
      .def_readwrite("n_outputs", &ForwardRun::n_outputs)
      .def_readwrite("y_alias", &ForwardRun::y_alias)
      .def_readwrite("saved_kind", &ForwardRun::saved_kind)
      .def_readwrite("saved_index", &ForwardRun::saved_index);
  py::class_<BackwardRun>(m, "BackwardRun")
      .def(py::init([](std::vector<c10::optional<at::Tensor>> saved, std::vector<int64_t> saved_kind,
                       std::vector<int64_t> saved_index, std::vector<at::Tensor> history,
                       c10::optional<at::Tensor> d_ys, std::vector<c10::optional<at::Tensor>> d_final,
                       std::vector<c10::optional<at::Tensor>> d_hist, std::vector<at::Tensor> d_hoisted,
                       std::vector<at::Tensor> zero_like, int64_t n_consts, int64_t n_grads, std::vector<bool> transposed,
                       std::vector<int64_t> operand_source, std::vector<int64_t> operand_index, int64_t steps,
                       int64_t chunk_rows, std::vector<at::Tensor> extras) {
             BackwardRun r;
             r.saved = std::move(saved);
             r.saved_kind = std::move(saved_kind);
             r.saved_index = std::move(saved_index);
             r.history = std::move(history);
             r.d_ys = std::move(d_ys);
             r.d_final = std::move(d_final);
             r.d_hist = std::move(d_hist);
             r.d_hoisted = std::move(d_hoisted);
             r.zero_like = std::move(zero_like);
             r.n_consts = n_consts;
             r.n_grads = n_grads;
             r.transposed = std::move(transposed);
             r.operand_source = std::move(operand_source);
             r.operand_index = std::move(operand_index);
             r.steps = steps;
             r.chunk_rows = chunk_rows;
             r.extras = std::move(extras);
             return r;
           }),
           py::kw_only(), py::arg("saved"), py::arg("saved_kind"), py::arg("saved_index"), py::arg("history"),
           py::arg("d_ys"), py::arg("d_final"), py::arg("d_hist"), py::arg("d_hoisted"), py::arg("zero_like"),
           py::arg("n_consts"), py::arg("n_grads"), py::arg("transposed"), py::arg("operand_source"),
           py::arg("operand_index"), py::arg("steps"), py::arg("chunk_rows"), py::arg("extras"))
      .def_readwrite("saved", &BackwardRun::saved)
      .def_readwrite("saved_kind", &BackwardRun::saved_kind)
      .def_readwrite("saved_index", &BackwardRun::saved_index)
      .def_readwrite("history", &BackwardRun::history)
      .def_readwrite("d_ys", &BackwardRun::d_ys)
      .def_readwrite("d_final", &BackwardRun::d_final)
      .def_readwrite("d_hist", &BackwardRun::d_hist)
      .def_readwrite("d_hoisted", &BackwardRun::d_hoisted)
      .def_readwrite("zero_like", &BackwardRun::zero_like)
      .def_readwrite("n_consts", &BackwardRun::n_consts)
      .def_readwrite("n_grads", &BackwardRun::n_grads)
      .def_readwrite("transposed", &BackwardRun::transposed)
      .def_readwrite("operand_source", &BackwardRun::operand_source)
      .def_readwrite("operand_index", &BackwardRun::operand_index)
      .def_readwrite("steps", &BackwardRun::steps)
      .def_readwrite("chunk_rows", &BackwardRun::chunk_rows)
      .def_readwrite("extras", &BackwardRun::extras);
  m.def("forward_sequence", &forward_sequence, py::arg("program"), py::arg("run"));
  m.def("backward_sequence", &backward_sequence, py::arg("program"), py::arg("run"));
  m.def("linear_scan_forward", &linear_scan_forward, py::arg("log_a"), py::arg("u"), py::arg("h0"),
        py::arg("backwards"), "h_t = exp(log_a_t) h_{t-1} + u_t over (T, N), sequential in time (engine/scan.py)");
  m.def("linear_scan_backward", &linear_scan_backward, py::arg("log_a"), py::arg("h0"), py::arg("h"),
        py::arg("grad_h"), py::arg("grad_last"), py::arg("backwards"),
        "(g, grad_log_a, grad_h0) of linear_scan_forward in one pass against reading order");
  m.def("vector_width", [] { return static_cast<int64_t>(at::vec::Vectorized<float>::size()); },
        "float lanes per vector register in this build");
  m.def("enums", &exported_enums, "the names and values of the enums a plan is written in (see records.py)");
  m.def("gated_scan_forward", &gated_scan_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("h0"),
        py::arg("valid"), py::arg("gates"), py::arg("block"),
        "h (T, B, H) of a scan cell's gating of x W^T + b: product, coefficients and recurrence, a block at a time");
  m.def("gated_scan_backward", &gated_scan_backward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("h0"),
        py::arg("h"), py::arg("valid"), py::arg("grad_h"), py::arg("grad_last"), py::arg("gates"), py::arg("block"),
        py::arg("need"), "(grad_x, grad_weight, grad_bias, grad_h0) of gated_scan_forward, blocks in reverse");
}
