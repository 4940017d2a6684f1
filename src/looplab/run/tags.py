"""Names of the tags a run carries that more than one module writes or reads: defined once."""

ROLE = "looplab.role"  # "sweep" for a sweep's parent, "job" for its children
SWEEP_ID = "looplab.sweep_id"  # a hash of the sweep folder, on the parent and every job
SWEEP_DIR = "looplab.sweep_dir"
RUN_DIR = "looplab.run_dir"  # the run's folder on the machine that trained it
STUDY = "looplab.study"  # a search's parent: its Optuna study, one parent for the study
SWEPT_KEYS = "looplab.swept_keys"  # on the parent: the keys that vary, comma-separated
JOB = "looplab.job"  # a job's number in its sweep
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
OVERRIDES = "looplab.overrides"  # the overrides as typed, JSON
CHOICES = "looplab.choices"  # the group choices, JSON
CONFIG_DIGEST = "looplab.config_digest"  # a run's identity for tracking.skip_finished
DATA_DIGEST = "looplab.data.digest"
BEST_JOB = "looplab.best_job"  # on a sweep's parent: its best job's number and run
BEST_RUN_ID = "looplab.best_run_id"
STOPPED_BY = "looplab.stopped_by"  # SIGINT, SIGTERM or SIGHUP: a KILLED run, a stopped sweep
CODE = "looplab.code"  # the user packages its `_target_`s name: JSON {package: "sha256:.. version"}
MODEL_ID = "looplab.model_id"  # a run's logged MLflow model (models:/<id>), once it has one
CHECKPOINT_EPOCH = "looplab.checkpoint_epoch"  # a stopped run's checkpoint: epochs finished...
CHECKPOINT_BATCH = "looplab.checkpoint_batch"  # ...and batches of the next
RESUMES = "looplab.resumes"  # how often the run was resumed
RESUMED_AT = "looplab.resumed_at_epoch"  # the epoch each resumption began in, comma-separated
CHECKPOINT_ARTIFACT = "checkpoint"  # the artifact folder of a stopped run's checkpoint.pt
UNENDED = "looplab.unended"  # a run whose process never ended it, sent as KILLED by a sync
EARLY_STOPPED_AT = "looplab.early_stopped_at_epoch"  # train.early_stop ended the run here...
BEST_EPOCH = "looplab.best_epoch"  # ...and model.pt holds this epoch's weights
PRUNED_AT = "looplab.pruned_at_epoch"  # a search's pruner stopped this trial after this epoch
STACK_SIZE = "looplab.stack_size"  # hydra/launcher=stacked trained this run in a stack of N
