"""The provisioning API: the host ATS upserts orgs, agencies, users and candidates."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.domain.auth import check_service_token
from server.domain.provisioning import CandidateSpec, UserSpec
from server.edge.http import JSONResponse, path_host_id, read_json
from server.edge.schemas import CandidateIn, NamedIn, UserIn
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


routes = [
    Route("/api/v1/orgs/{org}", put_org, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/agencies/{agency}", put_agency, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/users/{user}", put_user, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/candidates/{cand}", put_candidate, methods=["PUT"]),
    Route("/api/v1/orgs/{org}/candidates/{cand}", delete_candidate, methods=["DELETE"]),
]
