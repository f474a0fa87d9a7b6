"""The ``visctr`` command line: one verb per step of the method, ``run`` for all of them."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="visctr")
def main(debug: bool) -> None:
    """visctr: visual encoding and debiasing for CTR prediction in visual search.

    Steps: simulate (or import) -> classify | pretrain -> finetune -> embed -> train-ctr -> evaluate.
    `visctr run` does all of them for the seven methods (ResNet-C, S1, S2, S1+S2,
    S1+S2+H, S1+S2+D, S1+S2+IPS) and writes a report; `visctr config show` prints the configuration it uses.
    """


def _register() -> None:
    from visctr.world.cli import import_, simulate

    main.add_command(simulate)
    main.add_command(import_)
    for mod in (
        "visctr.encoders.cli",
        "visctr.eval.cli",
        "visctr.pipeline.cli",
        "visctr.serve.cli",
    ):
        module = __import__(mod, fromlist=["COMMANDS"])
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register()


if __name__ == "__main__":
    main()
