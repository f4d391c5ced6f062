"""What the operator may not hand a process that real attestation vouches for.

Inside a confidential VM or a Confidential Containers pod, the command line, the environment (``VEIL_<CMD>_*``)
and the ``--config`` file come from the host or the control plane, which the TEE does not trust. Key material given
that way is known to whoever gave it, yet evidence would vouch for it as if the TEE had made it; the ``insecure-*``
switches weaken a check the evidence cannot show. So with any real (non-simulated) evidence provider they are
refused at start, naming the option, and only simulated attestation (development, tests) accepts them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping

from veil_cli import Option, env_name


def refuse_operator_input(command: str, args: argparse.Namespace, options: Iterable[Option],
                          secrets: Mapping[str, str]) -> None:
    """Exit naming the first refused option that is set, unless ``args.attestation`` is ``simulated``.

    ``secrets`` maps option names that carry key material to what the process does instead; every ``insecure-*``
    option of ``options`` is refused too. Raises :class:`SystemExit` with the reason.
    """
    if args.attestation == "simulated":
        return
    names = [*secrets, *(o.name for o in options if o.name.startswith("insecure-"))]
    for name in names:
        if not getattr(args, name.replace("-", "_"), None):
            continue
        if name in secrets:
            why = (f"key material from outside the TEE: whoever sets the options (host, orchestrator: command line, "
                   f"${env_name(command, name)}, --config) would know a secret the evidence presents as the TEE's "
                   f"own. {secrets[name]}")
        else:
            why = ("an insecure switch: the evidence cannot show it, and whoever sets the options (host, "
                   f"orchestrator: command line, ${env_name(command, name)}, --config) is not trusted")
        raise SystemExit(f"veil {command}: --{name} is refused with --attestation {args.attestation}: {why}. It is "
                         "accepted only with --attestation simulated (development and tests).")
