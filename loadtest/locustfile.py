"""Locust users of the management API (docs/api.md) on a seeded index (seed.py).

``ApiUser``: a person at the web UI. Logs in once (a session cookie; the mix
has no state-changing request, so no CSRF token is needed) and waits until every
ApiUser has logged in (see ``LoginPhase``); then, with a think time between
actions: searches studies (patient name prefix, study date range, modality,
accession number, source AE, or just the newest), opens a study (the
study with its series, then each series' instances) and looks at the dashboard
(instances received in total, by modality and by source AE, over 1-90 days).
Study UIDs and accession numbers to open or search for come from the user's own
earlier results.

``MetricsScraper``: one Prometheus, scraping /metrics every few seconds.

Settings from the environment (loadtest/run.py sets them):
    LOADTEST_USERNAME / LOADTEST_PASSWORD   the account (seed.py creates 'loadtest')
    LOADTEST_METRICS_TOKEN                  api.metrics_token
    LOADTEST_WAIT_S                         think time, "MIN,MAX" seconds (default 0.5,1.5)
    LOADTEST_SCRAPE_S                       scrape interval (default 5)
"""

from __future__ import annotations

import datetime as dt
import os
import random
from typing import Any

import gevent.event
from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from seed import MODALITIES, PROFILES, STUDY_SPAN, SURNAMES

API = "/api/v1"
SEEN_MAX = 200
"""Study UIDs and accession numbers a user remembers from its results."""
SERIES_PAGE = 500
"""Instances asked for per series when a study is opened (the API's maximum)."""
LOGIN = "POST /auth/login"


class LoginPhase:
    """Every ApiUser logs in first; the others start once all have.

    NOTE: a login is ~0.1 s of argon2 CPU; interleaved with the other requests, a
    burst of them at start-up dominates the figures of everything else. So the
    run has two phases: the logins (their own figures), then the steady state,
    whose stats (and the total) are reset when it starts.
    """

    def __init__(self) -> None:
        self.environment: Environment | None = None
        self.expected: int | None = None
        self.arrived = 0
        self.over = gevent.event.Event()

    def logged_in(self) -> None:
        """A user's login finished (or failed: it stops, and counts as arrived)."""
        self.arrived += 1
        self._check()

    def spawned(self) -> None:
        assert self.environment is not None and self.environment.runner is not None
        self.expected = self.environment.runner.target_user_classes_count.get(ApiUser.__name__, 0)
        self._check()

    def _check(self) -> None:
        if self.over.is_set() or self.expected is None or self.arrived < self.expected:
            return
        assert self.environment is not None
        stats = self.environment.stats
        stats.total.reset()
        for entry in stats.entries.values():
            if entry.name != LOGIN:
                entry.reset()
        self.over.set()


login_phase = LoginPhase()


@events.init.add_listener
def _on_init(environment: Environment, **kwargs: Any) -> None:
    login_phase.environment = environment


@events.spawning_complete.add_listener
def _on_spawned(user_count: int, **kwargs: Any) -> None:
    login_phase.spawned()


def _wait() -> tuple[float, float]:
    low, _, high = os.environ.get("LOADTEST_WAIT_S", "0.5,1.5").partition(",")
    return float(low), float(high or low)


class ApiUser(FastHttpUser):
    wait_time = between(*_wait())

    def on_start(self) -> None:
        self.seen_studies: list[str] = []
        self.seen_accessions: list[str] = []
        with self.client.post(
            f"{API}/auth/login",
            json={
                "username": os.environ.get("LOADTEST_USERNAME", "loadtest"),
                "password": os.environ["LOADTEST_PASSWORD"],
            },
            name=LOGIN,
            catch_response=True,
        ) as resp:
            ok = resp.status_code == 200
            if not ok:
                resp.failure(f"login: {resp.status_code} {resp.text[:200]}")
        login_phase.logged_in()
        if not ok:
            raise StopUser()
        login_phase.over.wait()

    def _get(self, path: str, name: str, **params: Any) -> Any:
        """GET a JSON answer; None (and a failure) unless 200."""
        with self.client.get(
            f"{API}{path}",
            params=params or None,
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code} {resp.text[:200]}")
                return None
            return resp.json()

    def _search(self, name: str, **params: Any) -> None:
        page = self._get("/studies", f"GET /studies ({name})", **params)
        if page is None:
            return
        for study in page["items"]:
            self._remember(self.seen_studies, study["study_instance_uid"])
            if study["accession_number"]:
                self._remember(self.seen_accessions, study["accession_number"])

    @staticmethod
    def _remember(seen: list[str], value: str) -> None:
        if len(seen) < SEEN_MAX:
            seen.append(value)
        else:
            seen[random.randrange(SEEN_MAX)] = value

    @task(3)
    def search_patient_name(self) -> None:
        surname = random.choice(SURNAMES)
        self._search("patient_name", patient_name=surname[: random.randint(1, 4)].lower())

    @task(2)
    def search_study_date(self) -> None:
        start = dt.date.today() - dt.timedelta(days=random.randrange(STUDY_SPAN.days))
        end = start + dt.timedelta(days=random.choice((0, 1, 7, 30)))
        self._search("study_date", study_date_from=start.isoformat(), study_date_to=end.isoformat())

    @task(2)
    def search_modality(self) -> None:
        self._search("modality", modality=random.choice(MODALITIES))

    @task(1)
    def search_accession(self) -> None:
        if self.seen_accessions:
            accession = random.choice(self.seen_accessions)
            self._search("accession_number", accession_number=accession)
        else:
            self.search_newest()

    @task(1)
    def search_source_ae(self) -> None:
        profile = random.choice(list(PROFILES.values()))
        self._search("source_ae", source_ae=profile.source_ae)

    @task(2)
    def search_newest(self) -> None:
        self._search("newest")

    @task(4)
    def open_study(self) -> None:
        if not self.seen_studies:
            self.search_newest()
            return
        uid = random.choice(self.seen_studies)
        study = self._get(f"/studies/{uid}", "GET /studies/{uid}")
        for series in (study or {}).get("series", ()):
            self._get(
                f"/studies/{uid}/series/{series['series_instance_uid']}/instances",
                "GET /studies/{uid}/series/{uid}/instances",
                limit=SERIES_PAGE,
            )

    @task(2)
    def dashboard(self) -> None:
        span = random.choice(("1d", "7d", "30d", "90d"))
        for by in ("total", "modality", "source_ae"):
            self._get("/stats/volume", f"GET /stats/volume ({span})", range=span, by=by)


class MetricsScraper(FastHttpUser):
    fixed_count = 1
    wait_time = constant(float(os.environ.get("LOADTEST_SCRAPE_S", "5")))

    @task
    def scrape(self) -> None:
        token = os.environ["LOADTEST_METRICS_TOKEN"]
        with self.client.get(
            "/metrics",
            headers={"Authorization": f"Bearer {token}"},
            name="GET /metrics",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200 or b"dicomgw_" not in resp.content:
                resp.failure(f"{resp.status_code} {resp.text[:200]}")
