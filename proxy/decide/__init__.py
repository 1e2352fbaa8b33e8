"""The decision: request body -> intent -> classifier and experiments -> a ranked plan. Pure."""
