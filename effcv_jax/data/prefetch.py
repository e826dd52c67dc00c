"""A background thread that reads an iterator ahead of its consumer (bounded memory).

    for batch in prefetch(batches(), depth=4):   # the next 4 are read while this one runs
      ...

Exceptions raised while producing are re-raised in the consumer; closing the generator
(or leaving the loop) stops and joins the thread.
"""

import queue
import threading
from typing import Any, Iterator


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


_END = object()


def prefetch(items: Iterator[Any], depth: int, name: str = "prefetch") -> Iterator[Any]:
  """Iterates `items` in a background thread, at most `depth` ahead of the consumer.

  Exceptions are re-raised in the consumer; closing the generator stops the thread.
  """
  buffer: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item: Any) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put(item):
          return
      put(_END)
    except BaseException as error:  # pylint: disable=broad-except
      put(_Failure(error))

  thread = threading.Thread(target=produce, name=name, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is _END:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join()
