"""The `gradloop` command line: TOML configs, bundled and user datasets, a model zoo, run records.

Entry point: `gradloop.cli.main:main` (also `python -m gradloop`). Each command imports what it
needs (scikit-learn, matplotlib, the doctor) only when it runs.

Modules: `config` (schema, messages) and `tomlfile` (TOML in and out); `readers`, `datasets`,
`labels`, `prepare` (data in, the saved `DataSpec`); `models` (the zoo); `session` (config ->
data, model, Trainer; all checks); `rundir` (run directories, run.json); `saved` (a run reopened);
`summary` (text); `commands/` (one module per command group); `main` (argparse).
"""
