// The loss table: every masked loss, once. X(FUNCTOR, OP, NAME) is expanded
// by each backend to register the TensorFlow ops (OP, prefixed with
// "MaskedOps>"), instantiate the CUDA launchers, dispatch the binding's
// `loss=` argument (NAME) and register the XLA lowerings. Adding a loss is a
// functor header in losses/ and one line here (and its Python spec).
#pragma once

#include "losses/absolute_error.h"
#include "losses/binary_crossentropy.h"
#include "losses/categorical_crossentropy.h"
#include "losses/huber.h"
#include "losses/squared_error.h"

#define MASKED_OPS_LOSS_LIST(X)                                      \
  X(SquaredError, "SquaredError", "squared_error")                   \
  X(AbsoluteError, "AbsoluteError", "absolute_error")                \
  X(Huber, "Huber", "huber")                                         \
  X(BinaryCrossentropy, "BinaryCrossentropy", "binary_crossentropy") \
  X(BinaryCrossentropyFromLogits, "BinaryCrossentropyFromLogits", "binary_crossentropy_from_logits")

// The row losses (row_loss.h: a loss over each row of V classes), the same
// X(FUNCTOR, OP, NAME) shape for the adapters of the row engine. NAME is the
// Keras loss's name, with "_from_logits" for from_logits=True.
#define MASKED_OPS_ROW_LOSS_LIST(X)                                                     \
  X(SparseCategoricalCrossentropy, "SparseCategoricalCrossentropy",                     \
    "sparse_categorical_crossentropy")                                                  \
  X(SparseCategoricalCrossentropyFromLogits, "SparseCategoricalCrossentropyFromLogits", \
    "sparse_categorical_crossentropy_from_logits")                                      \
  X(CategoricalCrossentropy, "CategoricalCrossentropy", "categorical_crossentropy")     \
  X(CategoricalCrossentropyFromLogits, "CategoricalCrossentropyFromLogits",             \
    "categorical_crossentropy_from_logits")
