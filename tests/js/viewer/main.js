// The offline 3D viewer inlined into HTML previews: three.js + GLTFLoader + OrbitControls.
// Built into dreamfusion/export/assets/viewer.min.js by `npm run build-viewer` (tests/js).
//
//   DreamfusionViewer.mount(canvas, glbBase64, {autoRotate: true, background: "#f4f4f4"})
//
// The GLB arrives as base64 text inside the page and is parsed from memory: the viewer makes
// no network request (its textures come from blob: URLs the loader creates). When the model
// is on screen, window.__dreamfusionViewer = {ready: true, triangles, vertices}; on failure
// {ready: false, error} and the message is shown in place of the model.
import {
  Box3, Color, DirectionalLight, HemisphereLight, PerspectiveCamera, Scene, SRGBColorSpace,
  Sphere, Vector3, WebGLRenderer,
} from "three";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

function decodeBase64(text) {
  const bin = atob(text.replace(/\s+/g, ""));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes.buffer;
}

function countGeometry(root) {
  let triangles = 0, vertices = 0;
  root.traverse((o) => {
    if (!o.isMesh) return;
    const g = o.geometry;
    vertices += g.attributes.position.count;
    triangles += (g.index ? g.index.count : g.attributes.position.count) / 3;
  });
  return { triangles, vertices };
}

function mount(canvas, glbBase64, options = {}) {
  const opts = { autoRotate: true, background: "#f4f4f4", elevation: 10, fov: 30, ...options };
  const state = { ready: false };
  window.__dreamfusionViewer = state;

  const renderer = new WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
  renderer.outputColorSpace = SRGBColorSpace;
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  const scene = new Scene();
  scene.background = new Color(opts.background);
  const camera = new PerspectiveCamera(opts.fov, 1, 0.01, 100);
  scene.add(new HemisphereLight(0xffffff, 0x8d8d8d, 2.0));
  const sun = new DirectionalLight(0xffffff, 1.5);
  sun.position.set(0.5, 1, 1);
  camera.add(sun);
  scene.add(camera);
  const controls = new OrbitControls(camera, canvas);
  controls.enableDamping = true;
  controls.autoRotate = opts.autoRotate;
  controls.autoRotateSpeed = 2.0;

  function resize() {
    const w = canvas.clientWidth || 512, h = canvas.clientHeight || 512;
    if (canvas.width !== Math.floor(w * renderer.getPixelRatio()) || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
      renderer.setSize(w, h, false);
      camera.aspect = w / h;
      camera.updateProjectionMatrix();
    }
  }

  function frame(root) {
    const box = new Box3().setFromObject(root);
    const sphere = box.getBoundingSphere(new Sphere());
    const r = Math.max(sphere.radius, 1e-3);
    const dist = r / Math.sin((opts.fov * Math.PI) / 360) * 1.15;
    const el = (opts.elevation * Math.PI) / 180;
    controls.target.copy(sphere.center);
    camera.position.copy(sphere.center).add(new Vector3(0, Math.sin(el) * dist, Math.cos(el) * dist));
    camera.near = dist / 100;
    camera.far = dist * 10;
    camera.updateProjectionMatrix();
    controls.update();
  }

  let frames = 0;
  function loop() {
    resize();
    controls.update();
    renderer.render(scene, camera);
    if (state.model && !state.ready && ++frames >= 2) {
      Object.assign(state, { ready: true, ...countGeometry(state.model) });
      canvas.dispatchEvent(new CustomEvent("viewer-ready", { bubbles: true }));
    }
    requestAnimationFrame(loop);
  }

  function fail(err) {
    state.error = String(err && err.message ? err.message : err);
    const note = document.createElement("p");
    note.className = "viewer-error";
    note.textContent = "3D viewer: " + state.error;
    canvas.replaceWith(note);
    console.error("3D viewer:", state.error);
  }

  try {
    new GLTFLoader().parse(decodeBase64(glbBase64), "", (gltf) => {
      scene.add(gltf.scene);
      frame(gltf.scene);
      state.model = gltf.scene;
    }, fail);
  } catch (err) {
    fail(err);
  }
  requestAnimationFrame(loop);
  return state;
}

window.DreamfusionViewer = { mount };
