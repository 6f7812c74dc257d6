"""The peer in the ingest benchmark: Twilio's quickstart shape for an SMS webhook, written for this benchmark.

Flask; every request's X-Twilio-Signature checked with the official SDK's ``RequestValidator``; the answer built
with ``MessagingResponse``. Run it as the quickstarts deploy it: ``gunicorn --workers 1 tests.bench.peer_app:app``.
"""

from __future__ import annotations

from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from tests.support import AUTH_TOKEN

app = Flask(__name__)


@app.post("/twilio/sms")
def incoming_sms() -> Response:
    validator = RequestValidator(AUTH_TOKEN)
    if not validator.validate(request.url, request.form, request.headers.get("X-Twilio-Signature", "")):
        abort(403)
    reply = MessagingResponse()
    return Response(str(reply), mimetype="text/xml")
