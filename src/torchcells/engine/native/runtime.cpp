// torchcells native runtime: runs a traced step program T times without Python.
//
// A program is a list of instructions over a table of tensor slots, planned in
// Python from the derived forward/backward graphs (engine/native/plan.py):
//   * CALL   -- any aten operator, called through the dispatcher (boxed); per-step products
//               on large float32 weights call mkl::_mkl_linear on weights packed once;
//   * FUSED  -- a group of elementwise operations over one 2-D domain [R, C],
//               evaluated tile by tile in vector registers (at::vec), reading its
//               inputs from strided views and writing only the values used
//               outside the group, each into a fresh tensor or a preset place.
// The two drivers run the forward over all steps (saving what the backward reads
// into [T, ...] buffers) and the backward in reverse (the weight gradients of the
// per-step products summed by one product over all steps after the loop).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <type_traits>
#include <string>
#include <vector>

namespace {

enum ArgKind : int64_t { A_TENSOR = 0, A_INT = 1, A_DOUBLE = 2, A_BOOL = 3, A_NONE = 4, A_INTLIST = 5,
                         A_TENSORLIST = 6, A_SCALAR_INT = 7, A_SCALAR_DOUBLE = 8, A_BOOLLIST = 9 };

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

// Elementwise opcodes of the register machine.
enum Op : int64_t {
  O_ADD = 0, O_SUB, O_MUL, O_DIV, O_NEG, O_SIGMOID, O_TANH, O_EXP, O_LOG, O_RELU, O_SIGMOID_BWD,
  O_TANH_BWD, O_WHERE, O_THRESHOLD_BWD, O_MAX, O_MIN, O_SQRT, O_RSQRT, O_RECIP, O_ABS, O_COPY, O_SQUARE,
  O_FILL
};

// How an input of a fused group is laid over the [R, C] domain.
enum Lay : int64_t { L_FULL = 0, L_ROW = 1, L_COL = 2, L_SCALAR = 3 };

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

struct Step {
  bool fused;
  size_t index;
};

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
      std::vector<scalar_t> regs_store(static_cast<size_t>(f.n_regs * TILE) + 64);
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
    steps_.push_back({false, calls_.size()});
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
    steps_.push_back({true, fused_.size()});
    fused_.push_back(std::move(f));
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
      if (s.fused) {
        run_fused(fused_[s.index], slots, preset);
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
      once->values.assign(static_cast<size_t>(n_slots_), at::Tensor());
      for (const Call& call : calls_) {
        if (call.once) for (int64_t o : call.outs) if (o >= 0) once->values[o] = slots[o];
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
      const int64_t s = call.outs[k];
      if (s < 0) continue;
      if (preset[s].defined()) {
        preset[s].copy_(results[k]);
        slots[s] = preset[s];
      } else {
        slots[s] = results[k];
      }
    }
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
      if (o.into_slot >= 0) {
        slots[o.slot] = outs[k];
      } else if (preset[o.slot].defined() && !preset[o.slot].is_same(outs[k])) {
        preset[o.slot].copy_(outs[k]);
        slots[o.slot] = preset[o.slot];
      } else {
        slots[o.slot] = outs[k];
      }
    }
  }

  int64_t n_slots_;
  std::vector<int64_t> output_slots_;
  std::vector<Step> steps_;
  std::vector<Call> calls_;
  std::vector<Fused> fused_;
};

at::Tensor step_of(const at::Tensor& t, int64_t k) { return t.select(0, k); }

// The forward over all steps.
//   per_step[k] : [T, ...] hoisted inputs;  state: the initial leaves;  consts: per-sequence values;
//   valid: [T, B] bool or undefined.  Program outputs: [y, *new state (n_out - 1), *saved].
//   y_alias: the state leaf y is (then y's history is the output; nothing copied), or -1.
//   saved_kind[j]: 0 = per step (kept in a [T, ...] buffer), 1 = once (kept from step 0),
//                  2 + s = state leaf s before the step, 2 + n_s + s = after it (both read from
//                  the state history, nothing copied).
//   T: the number of steps. extras: inputs after all others (packed weights, see plan.py).
// Returns [ys, *final_state, *history(T+1, ...) per leaf, *saved buffers (kind 0/1 in order)].
std::vector<at::Tensor> forward_sequence(Program& prog, const std::vector<at::Tensor>& per_step,
                                         const std::vector<at::Tensor>& state, const std::vector<at::Tensor>& consts,
                                         const c10::optional<at::Tensor>& valid, int64_t n_out, int64_t y_alias,
                                         const std::vector<int64_t>& saved_kind, int64_t T,
                                         const std::vector<at::Tensor>& extras) {
  const size_t n_s = state.size();
  std::vector<at::Tensor> history(n_s);
  for (size_t s = 0; s < n_s; ++s) {
    auto shape = state[s].sizes().vec();
    shape.insert(shape.begin(), T + 1);
    history[s] = at::empty(shape, state[s].options());
    history[s].select(0, 0).copy_(state[s]);
  }
  at::Tensor ys;
  std::vector<at::Tensor> saved(saved_kind.size());
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> dest(static_cast<size_t>(n_out) + saved_kind.size());
  OnceCache once;
  for (int64_t t = 0; t < T; ++t) {
    inputs.clear();
    for (const auto& h : per_step) inputs.push_back(h.select(0, t));
    for (size_t s = 0; s < n_s; ++s) inputs.push_back(history[s].select(0, t));
    for (const auto& c : consts) inputs.push_back(c);
    if (valid.has_value()) inputs.push_back(valid->select(0, t));
    for (const auto& e : extras) inputs.push_back(e);
    // new state leaves go straight into the history; y into ys; per-step saved values into their buffers
    for (size_t s = 0; s < n_s; ++s) dest[s + 1] = history[s].select(0, t + 1);
    if (y_alias < 0 && ys.defined()) dest[0] = ys.select(0, t);
    for (size_t j = 0; j < saved_kind.size(); ++j) {
      dest[n_out + j] = (saved_kind[j] == 0 && saved[j].defined()) ? saved[j].select(0, t) : at::Tensor();
    }
    std::vector<at::Tensor> out = prog.run_with(inputs, dest, &once);
    if (y_alias < 0 && !ys.defined()) {
      auto shape = out[0].sizes().vec();
      shape.insert(shape.begin(), T);
      ys = at::empty(shape, out[0].options());
      ys.select(0, 0).copy_(out[0]);
    }
    for (size_t j = 0; j < saved_kind.size(); ++j) {
      if (saved_kind[j] == 0 && !saved[j].defined()) {
        const at::Tensor& v = out[n_out + j];
        auto shape = v.sizes().vec();
        shape.insert(shape.begin(), T);
        saved[j] = at::empty(shape, v.options());
        saved[j].select(0, 0).copy_(v);
      } else if (saved_kind[j] == 1 && t == 0) {
        saved[j] = out[n_out + j].contiguous();
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

// The backward over all steps, in reverse.
//   saved: as returned by forward_sequence (undefined for kind >= 2); history: the state history.
//   Program inputs: [*saved values, d_y, *d_state]; outputs: [*grads(n_grads), *deferred operand pairs].
//   d_ys [T, ...] (or undefined), d_final per leaf (or undefined), d_hist per leaf [T, ...] (or undefined).
//   d_hoisted: a [T, ...] buffer per hoisted input, filled step by step.
//   deferred: const index per deferred pair; transposed: whether the left operand comes transposed;
//   source: per pair, where both operands lie for all steps already ([kind, index] twice: 1 the
//   d_hoisted buffer, 2 a saved buffer, 3/4 the state history before/after the step; 0 made per
//   step, then kept in a [T, ...] buffer of its own) -- the pair's product is one product over
//   all T·B rows after the loop. Pairs whose left operand is not transposed, or whose operands
//   are not 2-D, are collected and multiplied in chunks of >= chunk_rows rows instead.
//   zero_like: one tensor per tangent giving its shape and dtype when a tangent is missing.
// Returns [*d_hoisted (or undefined), *d_state, *d_consts (summed), *summed deferred products].
std::vector<at::Tensor> backward_sequence(Program& prog, const std::vector<c10::optional<at::Tensor>>& saved,
                                          const std::vector<int64_t>& saved_kind,
                                          const std::vector<at::Tensor>& history, const c10::optional<at::Tensor>& d_ys_opt,
                                          const std::vector<c10::optional<at::Tensor>>& d_final,
                                          const std::vector<c10::optional<at::Tensor>>& d_hist,
                                          const std::vector<at::Tensor>& d_hoisted, int64_t n_c, int64_t n_grads,
                                          const std::vector<int64_t>& deferred, const std::vector<bool>& transposed,
                                          const std::vector<std::vector<int64_t>>& source,
                                          const std::vector<at::Tensor>& zero_like, int64_t T, int64_t chunk_rows,
                                          const std::vector<at::Tensor>& extras) {
  const int64_t n_h = static_cast<int64_t>(d_hoisted.size());
  const int64_t n_s = static_cast<int64_t>(history.size());
  const at::Tensor d_ys = d_ys_opt.has_value() ? *d_ys_opt : at::Tensor();
  std::vector<at::Tensor> carry;
  for (const auto& g : d_final) carry.push_back(g.has_value() ? *g : at::Tensor());
  std::vector<bool> got(static_cast<size_t>(n_h), false);
  std::vector<at::Tensor> acc(static_cast<size_t>(n_c));
  const size_t n_def = deferred.size();
  // A transposed pair's operands are read for all steps at once after the loop: from where they
  // already lie (source), or else from a [T, ...] buffer of their own, filled step by step.
  std::vector<bool> from_buffers(n_def);
  std::vector<int64_t> kinds(2 * n_def), indices(2 * n_def);
  std::vector<at::Tensor> own(2 * n_def);
  for (size_t p = 0; p < n_def; ++p) {
    from_buffers[p] = transposed[p];
    for (size_t k = 0; k < 2; ++k) {
      kinds[2 * p + k] = source[p][2 * k] != 0 ? source[p][2 * k] : 5;
      indices[2 * p + k] = source[p][2 * k] != 0 ? source[p][2 * k + 1] : static_cast<int64_t>(2 * p + k);
    }
  }
  std::vector<std::vector<at::Tensor>> lhs(n_def), rhs(n_def);
  std::vector<at::Tensor> summed(n_def);
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> dest;
  OnceCache once;
  int64_t rows_per_step = 1;
  for (int64_t t = T - 1; t >= 0; --t) {
    inputs.clear();
    for (size_t j = 0; j < saved_kind.size(); ++j) {
      const int64_t kind = saved_kind[j];
      if (kind == 0) inputs.push_back(saved[j]->select(0, t));
      else if (kind == 1) inputs.push_back(*saved[j]);
      else if (kind - 2 < n_s) inputs.push_back(history[kind - 2].select(0, t));
      else inputs.push_back(history[kind - 2 - n_s].select(0, t + 1));
    }
    std::vector<at::Tensor> tangents(carry.begin(), carry.end());
    for (int64_t s = 0; s < n_s; ++s) {
      if (d_hist.size() > static_cast<size_t>(s) && d_hist[s].has_value() && d_hist[s]->defined()) {
        at::Tensor g = d_hist[s]->select(0, t);
        tangents[s] = tangents[s].defined() ? tangents[s] + g : g;
      }
    }
    tangents.insert(tangents.begin(), d_ys.defined() ? d_ys.select(0, t) : at::Tensor());
    for (size_t k = 0; k < tangents.size(); ++k) {
      if (!tangents[k].defined()) tangents[k] = zero_like[k];  // programs never write their inputs
      inputs.push_back(tangents[k]);
    }
    for (const auto& e : extras) inputs.push_back(e);
    dest.assign(static_cast<size_t>(n_grads) + 2 * n_def, at::Tensor());
    for (int64_t i = 0; i < n_h; ++i) dest[i] = d_hoisted[i].select(0, t);
    for (size_t j = 0; j < 2 * n_def; ++j) {
      if (own[j].defined()) dest[n_grads + j] = own[j].select(0, t);
    }
    std::vector<at::Tensor> out = prog.run_with(inputs, dest, &once);
    for (int64_t i = 0; i < n_h; ++i) got[i] = got[i] || out[i].defined();
    for (int64_t s = 0; s < n_s; ++s) carry[s] = out[n_h + s];
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
            if (kinds[2 * p + k] != 5) continue;
            const at::Tensor& v = k == 0 ? a : b;
            auto shape = v.sizes().vec();
            shape.insert(shape.begin(), T);
            own[2 * p + k] = at::empty(shape, v.options());
            own[2 * p + k].select(0, t).copy_(v);
          }
        }
      }
      if (from_buffers[p]) continue;
      rows_per_step = std::max<int64_t>(1, transposed[p] ? a.size(0) : a.size(-1));
      lhs[p].push_back(a);
      rhs[p].push_back(b);
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
    if (kind == 5) b = own[index];
    else if (kind == 1) b = d_hoisted[index];
    else if (kind == 2) b = *saved[index];
    else if (kind == 3) b = history[index].narrow(0, 0, T);
    else b = history[index].narrow(0, 1, T);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Program>(m, "Program")
      .def(pybind11::init<int64_t, std::vector<int64_t>>())
      .def("add_call", &Program::add_call)
      .def("add_fused", &Program::add_fused)
      .def("run", &Program::run);
  m.def("forward_sequence", &forward_sequence);
  m.def("vector_width", [] { return static_cast<int64_t>(at::vec::Vectorized<float>::size()); },
        "float lanes per vector register in this build");
  m.def("backward_sequence", &backward_sequence);
}
