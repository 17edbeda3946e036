"""
A transaction written once, as a generator of statements (a *program*),
and its two runners: the daemon's (txpostgres, asynchronous) and the
``blip`` command's (plain psycopg2, blocking).

A program yields :class:`Statement` values, is sent each one's
:class:`Result`, and returns what it found; it never touches a connection,
so preparing the database (:mod:`blip.db.schema`) is the same program
whichever side runs it.
"""

from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Generator,
    Generic,
    Iterator,
    Optional,
    TypeVar,
    Union,
)

from psycopg2 import sql
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from blip.db.pool import Pool

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Statement:
    """
    One statement of a program.

    :param text: the SQL (identifiers composed with :mod:`psycopg2.sql`).
    :param params: its parameters; None runs the text as it is (no ``%``
        processing), as ``schema.sql`` needs.
    """

    text: Union[str, sql.Composable]
    params: Any = None


@dataclass(frozen=True, slots=True)
class Result:
    """
    What a statement of a program returned.

    :param rows: its rows as the driver gives them (empty for statements
        without a result); the program that asked knows their columns.
    :param count: how many rows it returned or changed.
    """

    rows: list[tuple[Any, ...]]
    count: int


#: A generator that yields statements, is sent their results, and returns
#: a value; a runner runs it inside one transaction.
Program = Generator[Statement, Result, T]


class _Steps(Generic[T]):
    """
    The statements of a program, each sent the result of the one before
    (see :meth:`ran`); once it is done, :attr:`value` is what it returned.
    """

    def __init__(self, program: Program[T]) -> None:
        self._program = program
        self._result: Optional[Result] = None
        #: What the program returned.
        self.value: T

    def __iter__(self) -> Iterator[Statement]:
        while True:
            try:
                statement = self._program.send(self._result)  # type: ignore[arg-type]
            except StopIteration as done:
                self.value = done.value
                return
            yield statement

    def ran(self, cursor: Any) -> None:
        """
        Note what the cursor's last statement returned, for the program.
        """
        self._result = Result(cursor.fetchall() if cursor.description else [], cursor.rowcount)


async def run(cursor: Any, program: Program[T]) -> T:
    """
    Run a program on a txpostgres cursor, in its transaction.

    :return: what the program returned.
    """
    steps = _Steps(program)
    for statement in steps:
        await cursor.execute(statement.text, statement.params)
        steps.ran(cursor)
    return steps.value


async def run_in(pool: "Pool", program: Program[T]) -> T:
    """
    Run a program in a transaction of its own on one of the pool's
    connections.

    :return: what the program returned.
    """
    value: T = await pool.runInteraction(lambda cursor: Deferred.fromCoroutine(run(cursor, program)))
    return value


def run_sync(cursor: Any, program: Program[T]) -> T:
    """
    Run a program on a psycopg2 cursor, in its transaction.

    :return: what the program returned.
    """
    steps = _Steps(program)
    for statement in steps:
        cursor.execute(statement.text, statement.params)
        steps.ran(cursor)
    return steps.value
