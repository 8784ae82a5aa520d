"""
A logging handler that puts every log record on the event bus.

Select it with ``--log-plugin queue``; ``--log-handler-options profile=NAME``
picks the event profile (default ``logger``). Each event body has
``message``, ``module``, ``level`` and ``timestamp``.

Records that evbus logs about itself are not put on the bus (no loop when a
publish fails and that failure is logged), nor are records logged while a
record is being put.
"""
import logging
import logging.handlers
import threading

_GUARD = threading.local()


def wrapper(hub, **kwargs):
    """
    :param kwargs: Handler options; ``profile`` is the event profile (default ``logger``)
    :return: An object with ``put_nowait(record)`` for ``logging.handlers.QueueHandler``
    """
    profile = kwargs.get("profile", "logger")

    class AsyncQueueWrapper:
        def __init__(self):
            self.profile = profile
            self.dropped = 0

        def put_nowait(self, record: logging.LogRecord):
            if getattr(record, "evbus_internal", False) or getattr(_GUARD, "active", False):
                return
            _GUARD.active = True
            try:
                hub.evbus.broker.put_nowait(
                    profile=self.profile,
                    body=dict(
                        message=record.getMessage(),
                        module=record.module,
                        level=record.levelname.strip(),
                        timestamp=str(getattr(record, "asctime", "")).strip(),
                    ),
                )
            except Exception:  # a closed bus or an unencodable message must not break logging
                self.dropped += 1
            finally:
                _GUARD.active = False

    return AsyncQueueWrapper()


def setup(hub, conf):
    """
    Log to the console and to the event bus.

    :param conf: The logging options of pop-config
    """
    root = logging.getLogger()

    raw_level = conf["log_level"].strip().lower()
    if raw_level.isdigit():
        hub.log.INT_LEVEL = int(raw_level)
    else:
        hub.log.INT_LEVEL = hub.log.LEVEL.get(raw_level, root.level)

    root.setLevel(hub.log.INT_LEVEL)
    cf = logging.Formatter(fmt=conf["log_fmt_console"], datefmt=conf["log_datefmt"])
    ch = logging.StreamHandler()
    ch.setLevel(hub.log.INT_LEVEL)
    ch.setFormatter(cf)
    root.addHandler(ch)
    hub.log.handlers.addHandler(ch)

    ff = logging.Formatter(fmt=conf["log_fmt_logfile"], datefmt=conf["log_datefmt"])
    _, kwargs = hub.render.cli.args(conf["log_handler_options"])

    qh = logging.handlers.QueueHandler(hub.log.queue.wrapper(**kwargs))
    qh.setLevel(hub.log.INT_LEVEL)
    qh.setFormatter(ff)
    root.addHandler(qh)
    hub.log.handlers.addHandler(qh)
