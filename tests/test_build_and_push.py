"""build-and-push.sh against a real registry on loopback.

Each test runs the script the way a user does, in a temporary git clone of this checkout (the
real checkout is never touched), and checks what lands in a real Debian `docker-registry` started
for this module on 127.0.0.1 (tests/lib/local-registry.sh). Both platforms are built from a
multi-arch base (MULTIARCH_BASE_IMAGE, made by tests/lib/arm64-base.sh): the first push builds
each platform once (arm64 under QEMU); later runs of the same commit reuse the build cache.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LIB = REPO / "tests" / "lib"
IMAGE = "aio-federation-agent"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)
BUILD_TIMEOUT_S = 1800


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return probe.returncode == 0


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


@dataclass(frozen=True)
class Registry:
    address: str

    def _get(self, path: str, method: str = "GET") -> urllib.request.Request:
        request = urllib.request.Request(f"http://{self.address}{path}", method=method)
        request.add_header("Accept", MANIFEST_TYPES)
        return request

    def catalog(self) -> list[str]:
        with urllib.request.urlopen(self._get("/v2/_catalog?n=1000"), timeout=10) as reply:
            return sorted(json.load(reply)["repositories"])

    def tags(self, repository: str = IMAGE) -> set[str]:
        try:
            with urllib.request.urlopen(
                self._get(f"/v2/{repository}/tags/list?n=1000"), timeout=10
            ) as reply:
                return set(json.load(reply)["tags"] or [])
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return set()
            raise

    def digest(self, tag: str, repository: str = IMAGE) -> str:
        request = self._get(f"/v2/{repository}/manifests/{tag}", method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.headers["Docker-Content-Digest"]

    def ref(self, tag: str) -> str:
        return f"{self.address}/{IMAGE}:{tag}"


Runner = Callable[..., Result]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "build-and-push test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "build-and-push test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _snapshot_clone(target: Path) -> Path:
    """A clone of this checkout whose HEAD holds the working tree as it is now (clean tree)."""
    _git(REPO.parent, "clone", "--quiet", "--no-hardlinks", str(REPO), str(target))
    for name in _git(REPO, "ls-files", "-co", "--exclude-standard", "-z").split("\0"):
        if not name:
            continue
        source, copy = REPO / name, target / name
        if source.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
    for name in _git(REPO, "ls-files", "-d", "-z").split("\0"):
        if name:
            (target / name).unlink(missing_ok=True)
    _git(target, "add", "-A")
    if _git(target, "status", "--porcelain"):
        _git(
            target,
            "commit",
            "--quiet",
            "-m",
            "snapshot of the working tree for build-and-push tests",
        )
    assert _git(target, "status", "--porcelain") == ""
    return target


@pytest.fixture(scope="module")
def docker_engine() -> None:
    if not _docker_answers():
        pytest.skip("no Docker engine answers (start one: bash tests/lib/docker-engine.sh)")


@pytest.fixture(scope="module")
def base_image(docker_engine: None) -> str:
    name = os.environ.get("MULTIARCH_BASE_IMAGE")
    if name:
        return name
    made = subprocess.run(
        ["bash", str(LIB / "arm64-base.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=BUILD_TIMEOUT_S,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def registry(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    port = str(_free_port())
    state = tmp_path_factory.mktemp("registry")
    script = str(LIB / "local-registry.sh")
    started = subprocess.run(
        ["bash", script, "start", "--port", port, "--dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    address = started.stdout.strip()
    yield Registry(address)
    subprocess.run(
        ["bash", script, "stop", "--port", port, "--dir", str(state), "--purge"], check=False
    )
    _remove_local_images(address)


def _remove_local_images(address: str) -> None:
    """The docker driver leaves every pushed (and `docker run --pull`ed) image in the engine."""
    listed = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}} {{.Tag}} {{.ID}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = [line.split() for line in listed.stdout.splitlines() if line.startswith(f"{address}/")]
    tagged = [f"{repo}:{tag}" for repo, tag, _ in rows if tag != "<none>"]
    untagged = sorted({image for _, tag, image in rows if tag == "<none>"})
    for refs in (tagged, untagged):  # untagged by ID without -f: never untags another name
        if refs:
            subprocess.run(["docker", "rmi", *refs], capture_output=True, check=False)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _snapshot_clone(tmp_path_factory.mktemp("clone") / "repo")


@pytest.fixture(scope="module")
def run(clone: Path, base_image: str) -> Runner:
    def _run(*args: str, cwd: Path | None = None, **env: str) -> Result:
        script = (cwd or clone) / "build-and-push.sh"
        environment = {**os.environ, "BASE_IMAGE": base_image, **env}
        for name in ("REGISTRY", "GITHUB_OWNER", "GITHUB_REPOSITORY_OWNER"):
            if name not in env:
                environment.pop(name, None)
        done = subprocess.run(
            [str(script), *args],
            cwd=cwd or clone,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT_S,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return _run


def short_sha(clone: Path) -> str:
    return _git(clone, "rev-parse", "--short=7", "HEAD")


# --- arguments and pre-flight: nothing is built -------------------------------------------------


@pytest.mark.parametrize("version", ["v1.2", "1.2.3", "v1.2.3+build.5", "v01.2.3", "latest"])
def test_bad_version_is_refused_with_the_expected_form(
    run: Runner, registry: Registry, version: str
) -> None:
    result = run(version, "--registry", registry.address)
    assert result.code == 64, result.stderr
    assert f"'{version}' is not dev, staging, prod or a semantic version vX.Y.Z" in result.stderr
    assert "fix: " in result.stderr
    assert registry.catalog() == []


def test_no_engine_names_how_to_start_it(run: Runner, registry: Registry, tmp_path: Path) -> None:
    dead = f"unix://{tmp_path}/docker.sock"
    result = run("dev", "--registry", registry.address, DOCKER_HOST=dead)
    assert result.code == 69, result.stderr
    assert f"[engine] the Docker engine does not answer at {dead}" in result.stderr
    assert "sudo systemctl start docker" in result.stderr


SYSTEM_PLUGIN_DIRS = [
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
]


def test_no_buildx_says_how_to_install_it(run: Runner, registry: Registry, tmp_path: Path) -> None:
    system = [d for d in SYSTEM_PLUGIN_DIRS if (Path(d) / "docker-buildx").exists()]
    if system:
        pytest.skip(
            f"buildx is installed system-wide in {system[0]}: an empty DOCKER_CONFIG cannot hide it"
        )
    result = run("dev", "--registry", registry.address, DOCKER_CONFIG=str(tmp_path))
    assert result.code == 69, result.stderr
    assert "[buildx] the docker buildx plugin is missing" in result.stderr
    assert "apt-get install docker-buildx" in result.stderr
    assert "https://github.com/docker/buildx/releases" in result.stderr


def test_unreachable_registry_fails_before_building(run: Runner) -> None:
    port = _free_port()
    result = run("dev", "--registry", f"127.0.0.1:{port}")
    assert result.code == 69, result.stderr
    assert f"[registry] registry 127.0.0.1:{port} does not answer" in result.stderr
    assert "--registry" in result.stderr.split("fix:")[1]
    assert "building linux" not in result.stderr


def test_registry_asking_for_credentials_needs_docker_login(run: Runner, tmp_path: Path) -> None:
    with warnings.catch_warnings():  # crypt: deprecated, still in 3.11; our only bcrypt at hand
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ci:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    port = str(_free_port())
    script = str(LIB / "local-registry.sh")
    state = tmp_path / "auth-registry"
    started = subprocess.run(
        ["bash", script, "start", "--port", port, "--dir", str(state), "--htpasswd", str(htpasswd)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    config = tmp_path / "docker-config"
    config.mkdir()
    plugins = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "cli-plugins"
    if plugins.is_dir():
        (config / "cli-plugins").symlink_to(plugins)
    address = f"127.0.0.1:{port}"
    try:
        refused = run("dev", "--registry", address, "--dry-run", DOCKER_CONFIG=str(config))
        assert refused.code == 77, refused.stderr
        assert f"[login] not logged in to {address}" in refused.stderr
        assert f"fix: docker login {address}" in refused.stderr

        subprocess.run(
            ["docker", "login", "-u", "ci", "--password-stdin", address],
            input="s3cret",
            env={**os.environ, "DOCKER_CONFIG": str(config)},
            capture_output=True,
            text=True,
            check=True,
        )
        accepted = run("dev", "--registry", address, "--dry-run", DOCKER_CONFIG=str(config))
        assert accepted.code == 0, accepted.stderr
    finally:
        subprocess.run(
            ["bash", script, "stop", "--port", port, "--dir", str(state), "--purge"], check=False
        )


# Valid platforms that builders rarely emulate. Which ones this builder lacks depends on the
# machine: Debian's qemu-user-static registers s390x, ppc64le, riscv64, ... as well as arm64.
RARE_PLATFORMS = ("linux/s390x", "linux/mips64le", "linux/mips64", "linux/loong64")


def _unbuildable_platform() -> str | None:
    inspect = subprocess.run(
        ["docker", "buildx", "inspect", "--bootstrap"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {
        platform.strip().rstrip("*")
        for line in inspect.splitlines()
        if line.startswith("Platforms:")
        for platform in line.split(":", 1)[1].split(",")
    }
    return next((p for p in RARE_PLATFORMS if p not in listed), None)


def test_platform_without_emulation_is_refused(run: Runner, registry: Registry) -> None:
    platform = _unbuildable_platform()
    if platform is None:
        pytest.skip(f"this builder emulates every candidate platform: {', '.join(RARE_PLATFORMS)}")
    before = registry.tags()
    result = run("dev", "--registry", registry.address, "--platforms", platform)
    assert result.code == 69, result.stderr
    assert f"cannot build {platform}" in result.stderr
    assert "qemu-user-static" in result.stderr
    assert registry.tags() == before


def test_dirty_tree_is_refused_unless_allowed(
    run: Runner, registry: Registry, clone: Path, tmp_path: Path
) -> None:
    dirty = tmp_path / "dirty"
    _git(tmp_path, "clone", "--quiet", str(clone), str(dirty))
    (dirty / "README.md").write_text((dirty / "README.md").read_text() + "\nlocal edit\n")

    refused = run("dev", "--registry", registry.address, cwd=dirty)
    assert refused.code == 78, refused.stderr
    assert "[git-tree] the git tree has 1 uncommitted change(s) (README.md)" in refused.stderr
    assert "--allow-dirty" in refused.stderr

    planned = run(
        "dev", "--registry", registry.address, "--allow-dirty", "--dry-run", "--json", cwd=dirty
    )
    assert planned.code == 0, planned.stderr
    sha = short_sha(dirty)
    tags = planned.json["tags"]
    assert tags == [registry.ref(t) for t in (f"sha-{sha}-dirty", "dev-dirty", f"dev-{sha}-dirty")]
    assert planned.json["dirty"] is True
    assert registry.catalog() == []


def test_dry_run_prints_the_plan_and_pushes_nothing(
    run: Runner, registry: Registry, clone: Path
) -> None:
    before = registry.catalog()
    result = run("v1.2.3", "--registry", registry.address, "--dry-run", "--json")
    assert result.code == 0, result.stderr
    sha = short_sha(clone)
    assert "DRY RUN, would build and push" in result.stderr
    assert f"tags        sha-{sha} 1.2.3 1.2 1 latest" in result.stderr
    assert result.json["dry_run"] is True
    assert result.json["digest"] is None
    assert "building linux" not in result.stderr
    assert registry.catalog() == before


# --- real builds and pushes (each platform built once; later runs hit the cache) -----------------


def test_dev_pushes_sha_dev_and_dev_sha_tags(
    run: Runner, registry: Registry, clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run("dev", "--registry", registry.address, "--json")
    assert result.code == 0, result.stderr
    sha = short_sha(clone)
    expected = {f"sha-{sha}", "dev", f"dev-{sha}"}
    helpers = {f"sha-{sha}-amd64", f"sha-{sha}-arm64"}
    assert registry.tags() == expected | helpers
    report = result.json
    assert {ref.rsplit(":", 1)[1] for ref in report["tags"]} == expected
    digests = {registry.digest(tag) for tag in expected}
    assert digests == {report["digest"]}
    platforms = {p["platform"]: p for p in report["platforms"]}
    assert set(platforms) == {"linux/amd64", "linux/arm64"}
    assert all(p["size_bytes"] > 50_000_000 for p in platforms.values())
    for tag in expected:
        assert f"{registry.ref(tag)}" in result.stderr  # the human table names every tag
    with capsys.disabled():
        print(
            "\n[build-and-push] dev build + push: "
            + ", ".join(
                f"{name} {p['build_seconds']} s, {p['size_bytes'] / 1e6:.1f} MB"
                for name, p in platforms.items()
            )
        )


def test_image_labels_come_from_git(registry: Registry, clone: Path) -> None:
    shown = subprocess.run(
        [
            "docker",
            "buildx",
            "imagetools",
            "inspect",
            registry.ref("dev"),
            "--format",
            "{{json .Image}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    configs = json.loads(shown.stdout)
    created = _git(clone, "log", "-1", "--date=format-local:%Y-%m-%dT%H:%M:%SZ", "--format=%cd")
    for platform in ("linux/amd64", "linux/arm64"):
        labels = configs[platform]["config"]["Labels"]
        assert labels["org.opencontainers.image.revision"] == _git(clone, "rev-parse", "HEAD")
        assert labels["org.opencontainers.image.version"] == f"dev-{short_sha(clone)}"
        assert labels["org.opencontainers.image.created"] == created


def test_prerelease_gets_its_version_tag_and_no_latest(run: Runner, registry: Registry) -> None:
    result = run("v1.2.3-rc.1", "--registry", registry.address)
    assert result.code == 0, result.stderr
    tags = registry.tags()
    assert "1.2.3-rc.1" in tags
    assert not {"latest", "1.2", "1"} & tags


def test_release_gets_full_minor_major_and_latest_tags(run: Runner, registry: Registry) -> None:
    result = run("v1.2.3", "--registry", registry.address, "--json")
    assert result.code == 0, result.stderr
    assert {"1.2.3", "1.2", "1", "latest"} <= registry.tags()
    assert {registry.digest(tag) for tag in ("1.2.3", "1.2", "1", "latest")} == {
        result.json["digest"]
    }
    assert registry.digest("1.2.3-rc.1") != result.json["digest"]


def test_repushing_a_release_is_refused_without_force(run: Runner, registry: Registry) -> None:
    before = registry.digest("1.2.3")
    refused = run("v1.2.3", "--registry", registry.address)
    assert refused.code == 78, refused.stderr
    assert f"[release-tag] {registry.ref('1.2.3')} already exists ({before})" in refused.stderr
    assert "--force" in refused.stderr
    assert "building linux" not in refused.stderr
    assert registry.digest("1.2.3") == before

    forced = run("v1.2.3", "--registry", registry.address, "--force", "--json")
    assert forced.code == 0, forced.stderr
    assert "will be overwritten (--force)" in forced.stderr
    assert registry.digest("1.2.3") == forced.json["digest"]


def test_manifest_lists_both_platforms_and_arm64_runs_under_emulation(registry: Registry) -> None:
    ref = registry.ref("1.2.3")
    shown = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Platform:  linux/amd64" in shown
    assert "Platform:  linux/arm64" in shown
    for platform, machine in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
        ran = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--pull",
                "always",
                "--platform",
                platform,
                ref,
                "uname",
                "-m",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == machine
