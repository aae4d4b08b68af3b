"""Display: text tables, JSON documents, output files, graphs. Pure formatting, no target access."""
