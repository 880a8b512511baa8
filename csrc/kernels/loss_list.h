// The loss table: every masked loss, once. X(FUNCTOR, OP, NAME) is expanded
// by each backend to register the TensorFlow ops (OP, prefixed with
// "MaskedOps>"), instantiate the CUDA launchers, dispatch the binding's
// `loss=` argument (NAME) and register the XLA lowerings. Adding a loss is a
// functor header in losses/ and one line here (and its Python spec).
#pragma once

#include "losses/absolute_error.h"
#include "losses/binary_crossentropy.h"
#include "losses/huber.h"
#include "losses/squared_error.h"

#define MASKED_OPS_LOSS_LIST(X)                                      \
  X(SquaredError, "SquaredError", "squared_error")                   \
  X(AbsoluteError, "AbsoluteError", "absolute_error")                \
  X(Huber, "Huber", "huber")                                         \
  X(BinaryCrossentropy, "BinaryCrossentropy", "binary_crossentropy") \
  X(BinaryCrossentropyFromLogits, "BinaryCrossentropyFromLogits", "binary_crossentropy_from_logits")
