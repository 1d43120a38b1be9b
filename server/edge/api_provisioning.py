"""The provisioning API: the host ATS upserts orgs, agencies, users and candidates, erases
candidates and people, and reads the audit trail."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.protocol import MAX_ID
from server.domain.auth import check_service_token
from server.domain.provisioning import CandidateSpec, UserSpec
from server.edge.http import JSONResponse, path_host_id, query_int, read_json
from server.edge.schemas import DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE, CandidateIn, NamedIn, UserIn
from server.edge.services import services


def _ids(request: Request, *names: str) -> list[str]:
    check_service_token(services(request).settings.service_token, request.headers)
    return [path_host_id(request, name) for name in names]


def _upserted(body: dict[str, object], created: bool) -> Response:
    return JSONResponse(body, status_code=201 if created else 200)


async def put_org(request: Request) -> Response:
    (org,) = _ids(request, "org")
    body = await read_json(request, NamedIn)
    return _upserted(*await services(request).provisioning.put_org(org, body.name))


async def put_agency(request: Request) -> Response:
    org, agency = _ids(request, "org", "agency")
    body = await read_json(request, NamedIn)
    return _upserted(*await services(request).provisioning.put_agency(org, agency, body.name))


async def put_user(request: Request) -> Response:
    org, user = _ids(request, "org", "user")
    body = await read_json(request, UserIn)
    spec = UserSpec(body.name, body.email, body.kind, body.agency, body.time_zone)
    return _upserted(*await services(request).provisioning.put_user(org, user, spec))


async def put_candidate(request: Request) -> Response:
    org, cand = _ids(request, "org", "cand")
    body = await read_json(request, CandidateIn)
    spec = CandidateSpec(body.name, body.coordinator, body.members, body.agency_users)
    return _upserted(*await services(request).provisioning.put_candidate(org, cand, spec))


async def delete_candidate(request: Request) -> Response:
    org, cand = _ids(request, "org", "cand")
    await services(request).provisioning.erase_candidate(org, cand)
    return Response(status_code=204)


async def delete_user(request: Request) -> Response:
    org, user = _ids(request, "org", "user")
    await services(request).provisioning.erase_user(org, user)
    return Response(status_code=204)


async def audit(request: Request) -> Response:
    (org,) = _ids(request, "org")
    after = query_int(request, "after", low=0, high=MAX_ID) or 0
    limit = query_int(request, "limit", low=1, high=MAX_AUDIT_PAGE) or DEFAULT_AUDIT_PAGE
    records, has_more = await services(request).provisioning.audit_page(
        org, after=after, limit=limit
    )
    return JSONResponse({"records": records, "has_more": has_more})


routes = [
    Route("/api/v1/orgs/{org}", put_org, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/agencies/{agency}", put_agency, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/users/{user}", put_user, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/users/{user}", delete_user, methods=["DELETE"]),
    Route("/api/v1/orgs/{org}/audit", audit, methods=["GET"]),
    Route("/api/v1/orgs/{org}/candidates/{cand}", put_candidate, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/candidates/{cand}", delete_candidate, methods=["DELETE"]),
]
