"""What the app keeps on disk and reads back checked: the feature store, the model
folder's schema."""
