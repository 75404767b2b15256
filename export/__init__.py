"""Model, data, training and SavedModel export (the model tier's build side)."""
