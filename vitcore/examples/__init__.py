"""Examples of the extension points users fill in: ``cnn_family``, a model family (``vitcore.families``)."""
