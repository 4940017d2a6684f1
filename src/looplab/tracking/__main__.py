"""`python -m looplab.tracking`: the MLflow writer process (see `writer.py`)."""

from looplab.tracking.writer import writer_main

writer_main()
