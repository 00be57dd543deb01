"""The stages joined: cache -> train -> trust -> evaluate, the trained and the opened model
as values, review (labeling is a stage of its own: app.core.labeling)."""
