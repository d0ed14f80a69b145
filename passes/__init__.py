"""Analysis and transform passes over the IR, with a registry and a pipeline parser."""
