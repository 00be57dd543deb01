"""One page per step of the path: data, features, train, evaluate, predict."""
