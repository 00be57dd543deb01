"""The stages joined: cache -> train -> trust -> evaluate, review, labeling."""
