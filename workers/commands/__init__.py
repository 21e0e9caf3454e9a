"""One module per `scorestream` verb, each with `add_parser(commands, environ)` that registers
its flags and sets `handler` to its `run(args, environ) -> exit code`."""

# In the order `scorestream --help` lists them: adding a verb is one module and one name here.
COMMANDS = (
    "broker", "topics", "demo", "train", "register", "infer", "monitor", "bench", "produce",
    "report",
)  # fmt: skip
