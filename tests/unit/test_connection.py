"""What the broker plugins share: the one-line text of a client library's error."""
from evbus.connection import error_text


class LibraryError(Exception):
    def __str__(self):
        return f"LibraryError: {self.args[0]}"  # as aiokafka's errors do


def test_error_text_is_type_and_message_on_one_line():
    assert error_text(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    text = error_text(ValueError("while parsing\n  in 'x', line 3"))
    assert text == "ValueError: while parsing in 'x', line 3"


def test_error_text_names_the_type_once():
    assert error_text(LibraryError("Unable to bootstrap")) == "LibraryError: Unable to bootstrap"


def test_error_text_of_an_error_without_a_message():
    assert error_text(ConnectionResetError()) == "ConnectionResetError"
