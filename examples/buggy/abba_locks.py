"""BUGGY: two methods that take the same two locks in opposite orders (ABBA).

``transfer`` takes the balances lock, then the journal lock; ``audit`` takes the journal lock,
then the balances lock. Run one after the other, as the test does, nothing goes wrong; run at
the same time, each thread can hold one lock and wait for the other for ever. Caught by
``--lock-order-check`` in a run that did *not* deadlock, naming both orders::

    pytest --lock-order-check examples/buggy/abba_locks.py

The fix: one order everywhere (balances, then journal).
"""

from __future__ import annotations

import threading


class Ledger:
    def __init__(self) -> None:
        self.balances_lock = threading.Lock()
        self.journal_lock = threading.Lock()
        self.balances = {"alice": 100, "bob": 0}
        self.journal: list[str] = []

    def transfer(self, source: str, target: str, amount: int) -> None:
        with self.balances_lock:
            self.balances[source] -= amount
            self.balances[target] += amount
            with self.journal_lock:
                self.journal.append(f"{source}->{target} {amount}")

    def audit(self) -> tuple[int, int]:
        with self.journal_lock:  # BUG: journal then balances, the inverse of transfer()
            with self.balances_lock:
                return len(self.journal), sum(self.balances.values())


def test_transfer_then_audit():
    ledger = Ledger()
    worker = threading.Thread(target=ledger.transfer, args=("alice", "bob", 30), name="payer")
    worker.start()
    worker.join()
    assert ledger.audit() == (1, 100)
