"""Image references, normalized the way Docker normalizes them (one parser for the scanner and the recreation)."""

from __future__ import annotations

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"


class ImageReference:
    """A parsed image reference, normalized the way Docker normalizes names.

    ``nginx`` -> domain ``docker.io``, repository ``library/nginx``, tag ``latest``;
    the registry API host for Docker Hub is ``registry-1.docker.io``.
    """

    def __init__(self, domain: str, repository: str, tag: str = "", digest: str = "") -> None:
        self.domain = domain
        self.repository = repository
        self.tag = tag
        self.digest = digest

    @classmethod
    def parse(cls, reference: str) -> ImageReference:
        ref = reference.strip()
        if not ref or " " in ref:
            raise ValueError(f"not an image reference: {reference!r}")
        digest = ""
        if "@" in ref:
            ref, digest = ref.split("@", 1)
        tag = ""
        last_slash = ref.rfind("/")
        colon = ref.rfind(":")
        if colon > last_slash:
            ref, tag = ref[:colon], ref[colon + 1:]
        first, _, rest = ref.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            domain, path = first, rest
        else:
            domain, path = DOCKER_HUB_DOMAIN, ref
        if domain in ("index.docker.io", "registry-1.docker.io"):
            domain = DOCKER_HUB_DOMAIN
        if domain == DOCKER_HUB_DOMAIN and "/" not in path:
            path = "library/" + path
        if not path or path != path.lower():
            raise ValueError(f"not an image reference: {reference!r}")
        if not digest and not tag:
            tag = "latest"
        return cls(domain, path, tag, digest)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API_HOST if self.domain == DOCKER_HUB_DOMAIN else self.domain

    @property
    def repo_key(self) -> tuple[str, str]:
        return (self.domain, self.repository)

    @property
    def engine_name(self) -> str:
        """The repository name as the Engine API's ``fromImage`` takes it."""
        if self.domain == DOCKER_HUB_DOMAIN:
            if self.repository.startswith("library/"):
                return self.repository[len("library/"):]
            return self.repository
        return f"{self.domain}/{self.repository}"

    def __str__(self) -> str:
        text = self.engine_name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
