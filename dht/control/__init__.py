"""Transformer⁻¹'s two-level control (spec ``transformer_inverse.md`` §4-§6): the complexity predictor on
cheap token statistics (``complexity``) and the recurrent halting policy trained with PPO (``policy``).
Neither imports the model: they read token ids, exits and pooled states given to them."""
