"""A made meme as the client asked for it: the image, or with `Accept: application/json` its captions."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request, Response

from gateway.meme_service import Meme
from gateway.schemas import CaptionOut, ConceptOut, MemeResponse, ModelOut, WordAttentionOut


def meme_response(
    request: Request, meme: Meme, body_type: type[MemeResponse] = MemeResponse, **body_fields: object
) -> Response:
    """The image with its caption in headers, or a `body_type` answer (`body_fields` besides the captions,
    model and permalink); both point at the stored meme."""
    permalink = str(request.url_for("get_meme", meme_id=meme.meme_id))
    result = meme.result
    if "application/json" in request.headers.get("accept", ""):
        body = body_type(
            captions=[
                CaptionOut(
                    text=c.text,
                    boxes=c.boxes,
                    score=c.score,
                    log_prob=c.log_prob,
                    specificity=c.specificity,
                    topic=c.topic,
                    style=c.style,
                    attention=[WordAttentionOut(word=w, weights=weights) for w, weights in c.attention]
                    if c.attention is not None
                    else None,
                )
                for c in result.captions
            ],
            concepts=[ConceptOut(word=word, probability=p) for word, p in result.concepts],
            model=ModelOut(name=result.model_name, version=result.model_version, backend=meme.backend)
            if meme.backend
            else None,
            rpcs=result.model_calls,
            width=meme.width,
            height=meme.height,
            permalink=permalink,
            **body_fields,
        )
        return Response(body.model_dump_json(), media_type="application/json", headers={"Location": permalink})
    headers = {"X-Memefly-Caption": quote(" / ".join(meme.boxes)), "Location": permalink}
    if meme.backend:
        headers |= {"X-Memefly-Model-Version": str(result.model_version), "X-Memefly-RPCs": str(result.model_calls)}
    return Response(meme.content, media_type=meme.media_type, headers=headers)
