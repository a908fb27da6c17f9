"""What a user does in the console, in a real browser against a real platform: log in, deploy through
the wizard and watch the service run, chat in the playground, see monitoring filled with real data,
find a request's log lines by its id, switch language; every page rendered and kept as a screenshot."""

from __future__ import annotations

import re

from tests.console.conftest import Console
from tideserve.resources.bootstrap import DEFAULT_SERVICE

NEW = "console-chat"


def chat(console: Console, text: str) -> str:
    """Send one message in the playground; return the request id the reply shows."""
    page = console.page
    console.open(f"playground/{DEFAULT_SERVICE}")
    page.fill("[data-testid=max-tokens]", "12")
    page.fill("[data-testid=temperature]", "0")
    page.fill("[data-testid=chat-input]", text)
    page.click("[data-testid=chat-send]")
    page.wait_for_selector("[data-testid=ttft]:has-text('ms')", timeout=60_000)
    page.wait_for_selector("[data-testid=tokens-per-s]")
    message = page.locator("[data-testid=assistant-message]").last
    figures = message.locator(".msg-meta").inner_text()
    assert message.inner_text().replace(figures, "").strip()  # the streamed reply itself
    return page.locator("[data-testid=request-id]").last.inner_text().strip()


def test_login_refuses_a_wrong_key_and_language_switches(console: Console):
    page = console.page
    console.login("ts-not-a-key")
    assert "refused" in page.inner_text("form.login .error")
    console.login()
    page.wait_for_selector("a[data-nav=services]:has-text('Inference services')")
    console.shot("login-en")
    page.click("[data-testid=lang]")
    page.wait_for_selector("a[data-nav=services]:has-text('推理服务')")
    assert page.evaluate("document.documentElement.lang") == "zh"
    page.reload()  # the choice is kept
    page.wait_for_selector("a[data-nav=services]:has-text('推理服务')")
    page.click("[data-testid=lang]")
    page.wait_for_selector("a[data-nav=services]:has-text('Inference services')")


def test_wizard_validates_inline_deploys_and_deletes(console: Console):
    page = console.page
    console.login()
    console.open("services/new")
    page.fill("input[name='metadata.name']", NEW)
    page.select_option("select[name='spec.model']", DEFAULT_SERVICE)
    utilization = "label.field:has(input[name='spec.parameters.gpuMemoryUtilization'])"
    page.fill(f"{utilization} input", "2")
    error = page.wait_for_selector(f"{utilization} .error")  # the dry run's verdict, before submit
    assert "gpuMemoryUtilization" in error.inner_text() or "1" in error.inner_text()
    env = "label.field:has(textarea[name='spec.env'])"
    page.fill(f"{env} textarea", "A=1\nnot a pair")
    assert "line 2" in page.wait_for_selector(f"{env} .error").inner_text()
    page.fill(f"{env} textarea", "A=1\nB=two")
    page.fill("input[name='spec.routing.rateLimit.requestsPerMinute']", "600")
    page.fill("input[name='spec.autoscaling.maxReplicas']", "2")
    page.select_option("select[name='spec.autoscaling.targets.0.metric']", "waitingPerReplica")
    page.fill("input[name='spec.autoscaling.targets.0.value']", "4")
    page.fill(f"{utilization} input", "0.9")
    page.wait_for_selector("[data-testid=fit].ok")
    console.shot("wizard-en")
    page.click("[data-testid=submit]")
    page.wait_for_url(re.compile(f"#/services/{NEW}$"))
    page.wait_for_selector(".bar .status-running", timeout=240_000)
    page.click(".bar [data-action=edit]")
    page.wait_for_selector("input[name='metadata.name'][disabled]")  # a name is fixed after creation
    page.wait_for_function("document.querySelector(\"textarea[name='spec.env']\").value.includes('B=two')")
    page.fill("textarea[name='metadata.description']", "Edited in the console.")
    page.click("[data-testid=submit]")
    page.wait_for_url(re.compile(f"#/services/{NEW}$"))
    page.wait_for_selector(".panel:has-text('Edited in the console.')")
    info = page.inner_text(".panel")
    assert "B=two" in info and "requestsPerMinute=600" in info
    assert page.inner_text("[data-testid=autoscaling]") == "1–2 · waitingPerReplica 4"
    page.click("[data-tab=instances]")
    page.wait_for_selector("[data-testid=instances] .status-running")
    console.shot("service-instances-en")
    page.click(".bar [data-action=delete]")
    page.fill(".modal input[aria-label=confirm]", NEW)
    page.click(".modal button.danger")
    page.wait_for_url(re.compile("#/services$"))
    page.wait_for_selector(f"a[data-service={NEW}]", state="detached", timeout=120_000)


def test_playground_then_logs_by_request_id_then_monitoring(console: Console):
    page = console.page
    console.login()
    request_id = chat(console, "Name a colour.")
    chat(console, "Name a fruit.")
    console.shot("playground-en")

    console.open(f"services/{DEFAULT_SERVICE}/logs")
    page.fill("input[name=request_id]", request_id)
    page.click("[data-testid=log-search]")
    page.wait_for_selector(f"[data-testid=logs][data-for*='request_id={request_id}']")
    lines = [line for line in page.inner_text("[data-testid=logs]").splitlines() if line.strip()]
    assert len(lines) >= 2 and all(request_id in line for line in lines)  # the gateway's and the engine's
    console.shot("service-logs-en")

    console.open(f"services/{DEFAULT_SERVICE}/monitoring")
    filled = "[data-testid=service-monitoring] [data-chart*='TTFT']:not([data-points='0'])"
    page.wait_for_selector(filled, timeout=60_000)
    assert page.inner_text("[data-testid=service-stats]")
    console.shot("service-monitoring-en")

    console.open("monitoring")
    page.wait_for_selector("[data-testid=water-levels]")
    page.wait_for_selector(f"[data-testid=services] a[data-service={DEFAULT_SERVICE}]")
    console.shot("cluster-monitoring-en")

    console.open(f"services/{DEFAULT_SERVICE}/yaml")
    page.wait_for_selector(".code pre:has-text('apiVersion: tideserve/v1')")
    page.click("button[data-view=manifests]")
    page.wait_for_selector(".code pre:has-text('kind: Deployment')")
    assert f"name: {DEFAULT_SERVICE}" in page.inner_text(".code pre")
    console.shot("service-manifests-en")


PAGES = [
    ("plaza", ".card"),
    (f"plaza/{DEFAULT_SERVICE}", "[data-testid=memory-table]"),
    ("resources", "[data-testid=clusters]"),
    ("resources/local", "[data-testid=groups]"),
    ("resources/local/default", "[data-testid=group-nodes]"),
    ("services", f"a[data-service={DEFAULT_SERVICE}]"),
    (f"services/{DEFAULT_SERVICE}", ".kv"),
    (f"services/{DEFAULT_SERVICE}/access", "[data-testid=endpoint]"),
    (f"services/{DEFAULT_SERVICE}/events", "[data-testid=events]"),
    (f"services/{DEFAULT_SERVICE}/yaml", ".code pre"),
    ("services/new", "[data-testid=wizard]"),
    ("playground", "[data-testid=chat-input]"),
    ("keys", "[data-testid=keys]"),
    ("monitoring", "[data-testid=water-levels]"),
]


def test_every_page_renders_in_both_languages(console: Console):
    page = console.page
    console.login()
    for lang in ("en", "zh"):
        page.evaluate(f"localStorage.setItem('tideserve.lang', '{lang}')")
        for route, ready in PAGES:
            console.open(route)
            page.reload()
            page.wait_for_selector(ready)
            assert page.evaluate("document.documentElement.lang") == lang
            console.shot(f"{route.replace('/', '-')}-{lang}")


def test_a_kubernetes_cluster_is_created_with_its_settings(console: Console):
    page = console.page
    console.login()
    console.open("resources")
    page.click("[data-testid=create-cluster]")
    page.fill("[data-testid=cluster-form] input[name=name]", "gpu-pool")
    page.select_option("[data-testid=cluster-form] select[name=platform]", "kubernetes")
    page.fill("input[name='kubernetes.kubeconfig']", "/nonexistent/kubeconfig")
    page.click("[data-testid=cluster-form] [data-testid=submit]")
    page.wait_for_selector(".field:has(input[name='kubernetes.kubeconfig']) .error:has-text('not found')")
    page.fill("input[name='kubernetes.kubeconfig']", "")  # in-cluster: the pod's service account
    page.select_option("select[name='kubernetes.autoscaler']", "hpa")
    console.shot("cluster-form-kubernetes-en")
    page.click("[data-testid=cluster-form] [data-testid=submit]")
    page.wait_for_selector("[data-testid=clusters] tr:has-text('gpu-pool'):has-text('kubernetes')")
    with console.platform.client() as c:
        made = c.get("/api/v1/clusters/gpu-pool").json()
        assert made["kubernetes"]["autoscaler"] == "hpa" and "kubeconfig" not in made["kubernetes"]
        assert c.delete("/api/v1/clusters/gpu-pool/groups/default").status_code == 204
        assert c.delete("/api/v1/clusters/gpu-pool").status_code == 204
