// The expression type the loss functors are instantiated with in the XLA
// lowerings: the same element math (csrc/kernels/losses/) builds XLA ops.
// Arithmetic between a value and a plain number (Acc(2), a functor's delta)
// turns the number into a scalar of the value's type; comparisons give
// predicates, which math::select consumes.
#pragma once

#include <optional>

#include "xla/hlo/builder/lib/constants.h"
#include "xla/hlo/builder/xla_builder.h"

namespace masked_ops {
namespace xla_lowering {

class XlaValue {
 public:
  // A number not yet tied to an operand (Acc(0.5) in a functor).
  XlaValue(double constant) : constant_(constant) {}  // NOLINT: implicit, as for float
  XlaValue(xla::XlaOp op) : op_(op) {}                // NOLINT

  bool is_constant() const { return !op_.has_value(); }
  double constant() const { return constant_; }
  // The operand, or the constant as a scalar of `like`'s type.
  xla::XlaOp op(const XlaValue& like) const {
    return op_ ? *op_ : xla::ScalarLike(like.op(like), constant_);
  }
  xla::XlaOp op() const { return *op_; }

 private:
  std::optional<xla::XlaOp> op_;
  double constant_ = 0.0;
};

// A comparison's result, with an operand of the compared values' shape and
// type (for selects between two numbers).
struct XlaPred {
  xla::XlaOp op;
  xla::XlaOp like;
};

// a OP b where at least one side is an operand.
template <class Build>
XlaValue Binary(const XlaValue& a, const XlaValue& b, Build build, double (*fold)(double, double)) {
  if (a.is_constant() && b.is_constant()) return XlaValue(fold(a.constant(), b.constant()));
  const XlaValue& like = a.is_constant() ? b : a;
  return XlaValue(build(a.op(like), b.op(like)));
}

inline XlaValue operator+(const XlaValue& a, const XlaValue& b) {
  return Binary(
      a, b, [](xla::XlaOp x, xla::XlaOp y) { return x + y; },
      [](double x, double y) { return x + y; });
}
inline XlaValue operator-(const XlaValue& a, const XlaValue& b) {
  return Binary(
      a, b, [](xla::XlaOp x, xla::XlaOp y) { return x - y; },
      [](double x, double y) { return x - y; });
}
inline XlaValue operator*(const XlaValue& a, const XlaValue& b) {
  return Binary(
      a, b, [](xla::XlaOp x, xla::XlaOp y) { return x * y; },
      [](double x, double y) { return x * y; });
}
inline XlaValue operator/(const XlaValue& a, const XlaValue& b) {
  return Binary(
      a, b, [](xla::XlaOp x, xla::XlaOp y) { return x / y; },
      [](double x, double y) { return x / y; });
}
inline XlaValue operator-(const XlaValue& a) {
  return a.is_constant() ? XlaValue(-a.constant()) : XlaValue(xla::Neg(a.op()));
}

#define MASKED_OPS_XLA_COMPARE(OP, BUILD)                            \
  inline XlaPred operator OP(const XlaValue& a, const XlaValue& b) { \
    const XlaValue& like = a.is_constant() ? b : a;                  \
    return XlaPred{xla::BUILD(a.op(like), b.op(like)), like.op()};   \
  }
MASKED_OPS_XLA_COMPARE(<, Lt)
MASKED_OPS_XLA_COMPARE(<=, Le)
MASKED_OPS_XLA_COMPARE(>, Gt)
MASKED_OPS_XLA_COMPARE(>=, Ge)
#undef MASKED_OPS_XLA_COMPARE

}  // namespace xla_lowering

// Overloads of the functors' math (csrc/kernels/loss_math.h) for XlaValue,
// found by the functors' qualified math:: calls.
namespace math {

inline xla_lowering::XlaValue abs(const xla_lowering::XlaValue& x) { return xla::Abs(x.op()); }
inline xla_lowering::XlaValue exp(const xla_lowering::XlaValue& x) { return xla::Exp(x.op()); }
inline xla_lowering::XlaValue log(const xla_lowering::XlaValue& x) { return xla::Log(x.op()); }
inline xla_lowering::XlaValue log1p(const xla_lowering::XlaValue& x) { return xla::Log1p(x.op()); }
inline xla_lowering::XlaValue log1p_of_nonnegative(const xla_lowering::XlaValue& x) {
  return xla::Log1p(x.op());
}

inline xla_lowering::XlaValue select(const xla_lowering::XlaPred& cond,
                                     const xla_lowering::XlaValue& a,
                                     const xla_lowering::XlaValue& b) {
  // Numbers become arrays of the predicate's shape, in the values' type.
  auto branch = [&](const xla_lowering::XlaValue& v) {
    return v.is_constant() ? xla::FullLike(cond.like, v.constant()) : v.op();
  };
  return xla::Select(cond.op, branch(a), branch(b));
}

}  // namespace math
}  // namespace masked_ops
